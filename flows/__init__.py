"""Prefect flows (finetune, and later monitor and retrain) and the `ftflow` command line that starts them."""
