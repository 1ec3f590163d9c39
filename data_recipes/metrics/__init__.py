"""Data engineers' domain metrics for the evaluate stage. Every module in this folder is imported when ftflow
discovers metrics (through the `ftflow.metrics` entry point), so a new one is one file with one `@domain_metric`
function (docs/evaluation.md)."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
