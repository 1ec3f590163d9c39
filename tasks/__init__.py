"""One Prefect task per stage: retries, cache key, logging and artifacts around one ftcore function."""
