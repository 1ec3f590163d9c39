"""Registered model versions in MLflow's registry: registering a model folder, its aliases (challenger ->
champion), its tags (lineage and file hashes), its description, and fetching it back. Runs, metrics and artifacts are
ftcore/tracking.py's; both go through its one client.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ftcore.hashing import file_hashes
from ftcore.locks import file_lock
from ftcore.paths import home
from ftcore.tracking import client, metric_key, tracking_uri

CHALLENGER, CHAMPION = "challenger", "champion"
# A version's tag: the hash of each file registered (JSON, {path: sha256}), so that a copy fetched later is checked.
FILES_TAG = "files"
# Versions registered before ftflow kept their tags to lineage carry their evaluation as `metric.<name>` tags.
LEGACY_METRIC_TAG = "metric."


def register_version(run_id: str, name: str, model_dir: Path, tags: dict[str, str],
                     identity: str | None = None) -> str:
    """Log `model_dir` as the run's `model` artifact and register it as a new version of `name`, tagged with its
    files' hashes (FILES_TAG).

    With `identity` (a tag key, e.g. the model's content hash), the version whose tag already holds the same value
    is returned instead, as it is: the same model registered twice (two runs at once, or a re-run whose model is
    unchanged) gives one version. The look-up and the registration hold a lock in FTFLOW_HOME, so runs that share
    it never both register; runs on other machines that share only the tracking server still can."""
    from mlflow.exceptions import MlflowException

    tags = {**tags, FILES_TAG: json.dumps(file_hashes(model_dir), separators=(",", ":"))}
    c = client()
    with _registry_lock():
        existing = _version_with_tag(name, identity, tags[identity]) if identity in tags else None
        if existing is not None:
            return existing
        c.log_artifacts(run_id, str(model_dir), artifact_path="model")
        try:
            c.get_registered_model(name)
        except MlflowException:
            c.create_registered_model(name, description="Fine-tuned by ftflow")
        source = f"{c.get_run(run_id).info.artifact_uri}/model"
        version = c.create_model_version(name, source=source, run_id=run_id, tags=tags)
    return str(version.version)


def _version_with_tag(name: str, key: str, value: str) -> str | None:
    """The oldest version of `name` whose tag `key` is `value`."""
    versions = client().search_model_versions(f"name = '{name}' and tags.`{key}` = '{value}'")
    return min((str(v.version) for v in versions), key=int, default=None)


def set_alias(name: str, alias: str, version: str) -> None:
    with _registry_lock():  # MLflow's SQL store checks and inserts an alias in two steps: runs at once collide
        client().set_registered_model_alias(name, alias, version)


def move_alias(name: str, alias: str, version: str, expected: str | None) -> str | None:
    """Point `alias` at `version` only if it points at `expected` (None: nowhere) or at `version` already: compare
    and set, atomic for the runs that share FTFLOW_HOME. Returns where it pointed before."""
    with _registry_lock():
        found = version_for_alias(name, alias)
        current = found["version"] if found else None
        if current == expected:
            client().set_registered_model_alias(name, alias, version)
    return current


def _registry_lock():
    """Registry changes that read then write hold this lock; MLflow's registry has no compare-and-set of its own."""
    return file_lock(home() / "locks" / "registry.lock")


def version_for_alias(name: str, alias: str) -> dict[str, Any] | None:
    """`{version, tags}` of the version carrying `alias`, or None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    return {"version": str(mv.version), "tags": dict(mv.tags)}


def describe_version(name: str, version: str, description: str) -> None:
    client().update_model_version(name, version, description=description)


def version_exists(name: str, version: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client().get_model_version(name, version)
    except MlflowException:
        return False
    return True


def version_tags(name: str, version: str) -> dict[str, str]:
    return dict(client().get_model_version(name, version).tags)


def registered_files(name: str, version: str) -> dict[str, str] | None:
    """The version's files and their hashes as registered; None for a version registered before ftflow kept them."""
    files = version_tags(name, version).get(FILES_TAG)
    return json.loads(files) if files else None


def version_run_id(name: str, version: str) -> str:
    """The pipeline run that registered the version."""
    return str(client().get_model_version(name, version).run_id)


def version_stage_metrics(name: str, version: str, stage: str) -> dict[str, float]:
    """A stage's summary metrics (by their own names) as the run that registered the version logged them. A version
    registered before its run's metrics were named `<stage>/<name>` has them as `metric.<name>` tags: those."""
    c = client()
    mv = c.get_model_version(name, version)
    tagged = {k.removeprefix(LEGACY_METRIC_TAG): float(v) for k, v in mv.tags.items()
              if k.startswith(LEGACY_METRIC_TAG)}
    if tagged:
        return tagged
    prefix = metric_key("", stage)
    return {k.removeprefix(prefix): v for k, v in c.get_run(mv.run_id).data.metrics.items() if k.startswith(prefix)}


def set_version_tags(name: str, version: str, tags: dict[str, str]) -> None:
    c = client()
    with _registry_lock():  # as for aliases: the SQL store merges a tag by a select and then an insert
        for k, v in tags.items():
            c.set_model_version_tag(name, version, k, v)


def aliases_of(name: str, version: str) -> list[str]:
    return sorted(client().get_model_version(name, version).aliases)


def registered_versions(name: str) -> list[dict[str, Any]]:
    """`{version, aliases, exports}` of each version of `name`, newest first (two registry calls: a version search
    leaves aliases out); exports are the kinds whose hash tag `ftcore/deploy/export.py` set."""
    c = client()
    aliases: dict[str, list[str]] = {}
    for alias, version in c.get_registered_model(name).aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    versions = c.search_model_versions(f"name = '{name}'")
    return [{"version": str(mv.version), "aliases": sorted(aliases.get(str(mv.version), [])),
             "exports": sorted(k.split(".")[1] for k in mv.tags if k.startswith("export.") and k.endswith(".hash"))}
            for mv in sorted(versions, key=lambda mv: -int(mv.version))]


def download_version(name: str, version: str, dst: Path) -> Path:
    """Download a registered version's files (a model folder) as the new folder `dst`, atomically: they are fetched
    beside it and renamed into place. Files missing from the artifact store raise FileNotFoundError."""
    import tempfile

    import mlflow
    from mlflow.exceptions import MlflowException

    source = client().get_model_version_download_uri(name, version)  # models:/ URIs would need the global registry
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dst.name}.", dir=dst.parent) as tmp:
        try:
            fetched = Path(mlflow.artifacts.download_artifacts(source, dst_path=tmp, tracking_uri=tracking_uri()))
        except (MlflowException, OSError) as e:
            raise FileNotFoundError(f"{source}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        fetched.rename(dst)
    return dst
