"""How every stage task is built: a persisted result and a cache key from what determines the stage's output.

The key hashes the task's job (config slices and upstream references, which count by their content hashes), the
code the stage runs (every project module its task module reaches by imports, and their data files:
tasks/code_closure.py), and the installed versions of the libraries that decide results. Inputs that identify the
current execution, such as the MLflow run id, are left out so that an unchanged stage hits the cache on the next
run. The stage's output folder is the hash of the same form of its job (`stage_folder`).
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from prefect import task
from pydantic import BaseModel

from ftcore.hashing import hash_bytes, hash_obj
from ftcore.paths import stage_dir
from tasks.code_closure import code_hash

# The libraries whose versions decide what a stage produces (their code is not in the key; their version is).
RESULT_LIBRARIES = ("torch", "transformers", "peft", "trl", "datasets")

# Parameters that differ on every execution, or say where it runs, and do not change what the stage produces (a
# search's trial: the same configuration trains the same model, and a retried trial resumes its checkpoints).
RUN_ID = "mlflow_run_id"
PER_EXECUTION = frozenset({RUN_ID, "run_tags", "runtime", "trial"})


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


@functools.cache
def library_versions() -> dict[str, str]:
    """The installed version of each library in RESULT_LIBRARIES (`absent` where one is not installed)."""
    found = {}
    for name in RESULT_LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    return found


def jsonable(value: Any) -> Any:
    """The JSON form of a stage's inputs, as its cache key and output folder hash it. An upstream output (or pinned
    data) counts by what identifies its content (`cache_identity()`), not its folder or timings: a stage re-run that
    produced the same content leaves the stages after it cached."""
    if hasattr(value, "cache_identity"):
        return value.cache_identity()
    if isinstance(value, BaseModel):  # a job: the upstream outputs among its fields count by content too
        dumped = value.model_dump(mode="json")
        return {**dumped, **{k: jsonable(v) for k, v in value if k in dumped and isinstance(v, BaseModel)}}
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
            key = {"inputs": inputs, "code": code_digest, "plugins": plugins, "libraries": library_versions()}
            return f"{name}-{hash_obj(key)}"

        return task(name=name, cache_key_fn=cache_key, persist_result=True, task_run_name=name)(recording_run(fn))

    return decorate


def recording_run(fn: Callable) -> Callable:
    """`fn` with the pipeline's MLflow run id as a parameter (`mlflow_run_id`, which only the tasks that use it
    declare), recorded in the output it returns: a later run that takes the output from the cache then names the run
    that holds its artifacts and training history (ftcore/tracking.py: log_stage_output)."""
    signature = inspect.signature(fn)
    declared = RUN_ID in signature.parameters
    if not declared:
        run_id = inspect.Parameter(RUN_ID, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=str | None)
        signature = signature.replace(parameters=[*signature.parameters.values(), run_id])

    @functools.wraps(fn)
    def run_stage(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        run_id = bound.arguments[RUN_ID] if declared else bound.arguments.pop(RUN_ID)
        return fn(*bound.args, **bound.kwargs).model_copy(update={RUN_ID: run_id})

    run_stage.__signature__ = signature  # what Prefect binds a call's parameters to
    return run_stage


def stage_folder(name: str, job: BaseModel, **extra: Any) -> Path:
    """The stage's content-addressed output folder: the hash of the same JSON form of its job as its cache key's."""
    return stage_dir(name, jsonable(job), *([jsonable(extra)] if extra else []))
