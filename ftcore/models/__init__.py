"""The init stage: a base model and tokenizer (built from config, or loaded from a folder or hub id) and the
fine-tuning method wrapped around it."""
