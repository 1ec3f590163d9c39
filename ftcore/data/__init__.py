"""The data stages: collect sources into one canonical table, clean it with registered steps, split it."""
