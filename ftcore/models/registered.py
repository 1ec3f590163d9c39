"""Models that a recipe names by reference: a registered version (`model.source: champion`, `reward.model:
models:/NAME@ALIAS`) or a local folder.

A reference is pinned once, when the run starts (an alias to the version it points at then), so every stage of the
run sees the same model even if the alias moves meanwhile, and the pinned version (or the folder's content hash) is
part of the cache key of the stages that read it. The files are fetched into `$FTFLOW_HOME/registry/NAME/VERSION`
once and reused: a registered version never changes.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from ftcore import tracking
from ftcore.alignment_config import MODEL_URI
from ftcore.errors import UserError
from ftcore.hashing import hash_dir
from ftcore.paths import home


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


def pin_registered(name: str, alias: str | None, version: str | None, field: str) -> ModelRef:
    """The version `alias` points at now (or `version`, checked to exist). `field` names the recipe field for the
    error message."""
    if version is None:
        found = tracking.version_for_alias(name, alias or tracking.CHAMPION)
        if found is None:
            raise UserError(f"{field}: registered model {name!r} has no version with alias {alias!r} in "
                            f"{tracking.tracking_uri()}; run its recipe first, or name a version")
        version = found["version"]
    elif not tracking.version_exists(name, version):
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
    """The folder holding the model's files: the local folder, or the registered version fetched once."""
    if ref.path is not None:
        return ref.path
    folder = home() / "registry" / str(ref.name) / str(ref.version)
    if not (folder / "config.json").is_file():
        tracking.download_version(str(ref.name), str(ref.version), folder)
    return folder
