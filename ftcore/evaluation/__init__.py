"""The evaluate stage: downstream metrics for the base model and the fine-tuned candidate on the test split."""
