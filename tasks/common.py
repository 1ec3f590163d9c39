"""How every stage task is built: a persisted result and a cache key from what determines the stage's output.

The key hashes the task's inputs (config slices and upstream references, which carry content hashes), and the
code the stage runs: every project module its task module reaches by imports, and their data files
(tasks/code_closure.py). Inputs that identify the current execution, such as the MLflow run id, are left out so that
an unchanged stage hits the cache on the next run.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from prefect import task
from pydantic import BaseModel

from ftcore.hashing import hash_bytes, hash_obj
from tasks.code_closure import code_hash

# Parameters that differ on every execution, or say where it runs, and do not change what the stage produces.
PER_EXECUTION = frozenset({"mlflow_run_id", "run_tags", "runtime"})


def source_hash(module_names: Iterable[str]) -> str:
    """Hash of the source files of the named (imported) modules: code a recipe picks by name, which no import of
    the stage's leads to. A package counts with every file under it: submodules and the resources they read (an
    abbreviation dictionary, a synonym list)."""
    files: set[Path] = set()
    for name in set(module_names):
        path = Path(inspect.getfile(sys.modules[name]))
        package_files = (p for p in path.parent.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        files.update(package_files if path.name == "__init__.py" else [path])
    return hash_bytes(b"".join(f.read_bytes() for f in sorted(files)))


def jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def stage_task(name: str, plugin_code: Callable[[dict[str, Any]], str] | None = None) -> Callable:
    """Decorator: a Prefect task for stage `name`, cached on its inputs and on the code closure of its module.

    `plugin_code(parameters)` adds the source hash of code chosen by the recipe (e.g. data engineers' steps), which
    no import of the stage's leads to.
    """

    def decorate(fn: Callable) -> Callable:
        code_digest = code_hash(fn.__module__)

        def cache_key(_context, parameters: dict[str, Any]) -> str:
            inputs = {k: jsonable(v) for k, v in parameters.items() if k not in PER_EXECUTION}
            plugins = plugin_code(parameters) if plugin_code else ""
            return f"{name}-{hash_obj({'inputs': inputs, 'code': code_digest, 'plugins': plugins})}"

        return task(name=name, cache_key_fn=cache_key, persist_result=True, task_run_name=name)(fn)

    return decorate


def stage_inputs(**parts: Any) -> dict[str, Any]:
    """The JSON form of a stage's inputs, used to name its content-addressed output folder."""
    return {k: jsonable(v) for k, v in parts.items()}
