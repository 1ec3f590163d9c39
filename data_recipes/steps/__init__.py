"""Data engineers' cleaning steps. Every module in this folder is imported when ftflow discovers steps (through
the `ftflow.cleaning_steps` entry point), so a new step is one file with one `@cleaning_step` function."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
