"""Hyperparameter and method search over a recipe's fields (`ftflow tune`, docs/tune.md)."""
