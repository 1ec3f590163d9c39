"""Prefect flows (finetune, monitor, and later retrain) and the `ftflow` command line that starts them."""
