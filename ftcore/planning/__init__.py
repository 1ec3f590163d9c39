"""Method advisor: parameters, memory and compute of a recipe's model and method on this machine."""
