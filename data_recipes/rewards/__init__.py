"""Data engineers' reward functions for task rl. Every module in this folder is imported when ftflow discovers
reward functions (through the `ftflow.reward_functions` entry point), so a new one is one file with one
`@reward_function` function (docs/alignment.md)."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
