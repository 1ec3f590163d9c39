"""Models that a recipe names by reference: a registered version (`model.source: champion`, `reward.model:
models:/NAME@ALIAS`) or a local folder.

A reference is pinned once, when the run starts (an alias to the version it points at then), so every stage of the
run sees the same model even if the alias moves meanwhile, and the pinned version (or the folder's content hash) is
part of the cache key of the stages that read it. The files are fetched into `$FTFLOW_HOME/registry/NAME/VERSION`
once and reused: a registered version never changes.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from ftcore import tracking, versions
from ftcore.errors import UserError
from ftcore.hashing import file_hashes, hash_dir
from ftcore.models.config import MODEL_URI
from ftcore.paths import home

log = logging.getLogger(__name__)


class ModelRef(BaseModel):
    """A pinned model: a registered version (`name`, `version`) or a local folder (`path`), and what identifies
    its content (the version, or the folder's hash)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fingerprint: str
    name: str | None = None
    version: str | None = None
    path: Path | None = None

    @property
    def label(self) -> str:
        return f"{self.name}/{self.version}" if self.name else str(self.path)

    @property
    def uri(self) -> str:
        """Where the model is named: `models:/NAME/VERSION`, or the folder."""
        return f"models:/{self.label}" if self.name else str(self.path)


def pin_registered(name: str, alias: str | None, version: str | None, field: str) -> ModelRef:
    """The version `alias` points at now (or `version`, checked to exist). `field` names the recipe field for the
    error message."""
    if version is None:
        found = versions.version_for_alias(name, alias or versions.CHAMPION)
        if found is None:
            raise UserError(f"{field}: registered model {name!r} has no version with alias {alias!r} in "
                            f"{tracking.tracking_uri()}; run its recipe first, or name a version")
        version = found["version"]
    elif not versions.version_exists(name, version):
        raise UserError(f"{field}: registered model {name!r} has no version {version} in {tracking.tracking_uri()}")
    return ModelRef(fingerprint=f"{name}/{version}", name=name, version=version)


def pin_reference(ref: str, field: str) -> ModelRef:
    """A `models:/NAME@ALIAS` or `models:/NAME/VERSION` URI pinned to its version, or a local model folder."""
    match = MODEL_URI.match(ref)
    if match:
        return pin_registered(match["name"], match["alias"], match["version"], field)
    path = Path(ref).expanduser().resolve()
    if not (path / "config.json").is_file():
        raise UserError(f"{field}: {ref!r} is neither a model folder (with config.json) nor a registered model "
                        "(models:/NAME@ALIAS or models:/NAME/VERSION)")
    return ModelRef(fingerprint=hash_dir(path), path=path)


def model_folder(ref: ModelRef) -> Path:
    """The folder holding the model's files: the local folder, or the registered version fetched once. Every use of
    the fetched copy checks it against the hashes recorded at registration: a damaged copy is fetched again, and
    files missing or damaged in the artifact store are a one-line error naming the version and the files."""
    if ref.path is not None:
        return ref.path
    name, version = str(ref.name), str(ref.version)
    uri = f"models:/{name}/{version}"
    folder = home() / "registry" / name / version
    expected = versions.registered_files(name, version)
    if expected is None:
        log.warning("%s was registered before ftflow recorded its files' hashes: only config.json is checked", uri)
    if folder.exists():
        if (damage := copy_damage(folder, expected)) is None:
            return folder
        log.warning("%s: the copy in %s is not what was registered (%s); fetching it again", uri, folder, damage)
        shutil.rmtree(folder)
    try:
        versions.download_version(name, version, folder)
    except FileNotFoundError as e:
        raise UserError(f"{uri}: its files cannot be fetched from the artifact store ({e}); register the model "
                        "again (run its recipe) or use another version") from None
    if (damage := copy_damage(folder, expected)) is not None:
        shutil.rmtree(folder)
        raise UserError(f"{uri}: the files in the artifact store are not what was registered ({damage}); register "
                        "the model again (run its recipe) or use another version")
    return folder


def copy_damage(folder: Path, expected: dict[str, str] | None) -> str | None:
    """What a copy of a version's files lacks or has changed against `expected` ({path: sha256}); None when it is
    whole. Without `expected` (a version registered before ftflow recorded it), config.json is all there is."""
    if expected is None:
        return None if (folder / "config.json").is_file() else "missing: config.json"
    found = file_hashes(folder)
    missing = [name for name in expected if name not in found]
    changed = [name for name in expected if name in found and found[name] != expected[name]]
    problems = ([f"missing: {', '.join(missing)}"] if missing else []) + \
        ([f"damaged or truncated: {', '.join(changed)}"] if changed else [])
    return "; ".join(problems) or None
