"""What `ftflow serve` serves: a registered model by alias (`models:/NAME@ALIAS`, followed when the alias moves), a
fixed version (`models:/NAME/VERSION`) or a local model folder."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ftcore.errors import UserError
from ftcore.hashing import hash_dir, short
from ftcore.models.config import MODEL_URI
from ftcore.models.load import runs_own_code
from ftcore.models.registered import model_folder, pin_reference

log = logging.getLogger("ftflow.serve")


@dataclass(frozen=True)
class ModelSource:
    target: str
    name: str
    alias: str | None = None  # set when the target follows an alias: the version is looked up again to reload
    folder: Path | None = None
    variant: str = "model"
    device: str = "cpu"
    dtype: str = "float32"  # the weights' type in memory (ServeConfig.dtype)

    def current_version(self) -> str:
        """The version to serve now: the alias's (one registry call), the fixed one, or the folder's content hash."""
        if self.folder is not None:
            return short(hash_dir(self.folder))
        ref = pin_reference(self.target if self.alias is None else f"models:/{self.name}@{self.alias}", "MODEL_URI")
        return str(ref.version)

    def load(self, version: str):
        """The engine for `version` of this source: the registered model, or one of its exports (files fetched once
        into $FTFLOW_HOME/registry)."""
        from ftcore.serving.engine import engine_for, load_engine

        if self.folder is not None:
            return load_engine(self.folder, self.name, version, self.device, self.dtype)
        folder = model_folder(pin_reference(f"models:/{self.name}/{version}", "MODEL_URI"))
        if self.variant == "model":
            return load_engine(folder, self.name, version, self.device, self.dtype)
        from ftcore.deploy.export import fetch_export, load_export
        from ftcore.models.prompting import read_prompting

        export = fetch_export(self.name, version, self.variant, folder.parent / f"{version}-{self.variant}")
        model, tokenizer = load_export(export)
        # An export keeps the weights; how the model was prompted is recorded with the version it came from.
        return engine_for(model, tokenizer, self.name, version, read_prompting(folder, tokenizer), self.device,
                          self.variant, self.dtype)


def model_source(target: str, variant: str = "model", device: str = "cpu", dtype: str = "float32") -> ModelSource:
    """Parse MODEL_URI; a bad one is a one-line error naming the forms accepted."""
    match = MODEL_URI.match(target)
    if match:
        return ModelSource(target=target, name=match["name"], alias=match["alias"], variant=variant, device=device,
                           dtype=dtype)
    folder = Path(target).expanduser().resolve()
    if not (folder / "config.json").is_file():
        raise UserError(f"MODEL_URI: {target!r} is neither models:/NAME@ALIAS, models:/NAME/VERSION nor a model "
                        "folder with config.json")
    if variant != "model":
        raise UserError(f"--variant {variant}: exports belong to registered versions; serve models:/NAME@ALIAS")
    if runs_own_code(folder):  # a registered version's code was allowed by its recipe; this folder's, by no one
        raise UserError(f"MODEL_URI: {folder} needs its own Python code to load (config.json's auto_map), and ftflow "
                        "runs a folder's code only for a recipe that sets model.trust_remote_code: true; serve the "
                        "version registered from it (models:/NAME/VERSION)")
    return ModelSource(target=target, name=folder.name, folder=folder, device=device, dtype=dtype)


class AliasWatcher:
    """Every `interval_s`, asks the registry where the alias points; when it moved, loads the new version beside the
    one serving and hands it to `swap`. A registry that cannot be reached is logged and tried again next time: the
    server keeps serving what it has."""

    def __init__(self, source: ModelSource, serving_version: Callable[[], str], swap: Callable[[object], None],
                 interval_s: float):
        self.source, self.serving_version, self.swap, self.interval_s = source, serving_version, swap, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ftflow-alias-watcher", daemon=True)

    def start(self) -> None:
        if self.source.alias is not None and self.interval_s > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def check(self) -> bool:
        """Reload when the alias moved; True when it did."""
        version = self.source.current_version()
        if version == self.serving_version():
            return False
        log.info("%s@%s moved to version %s: loading it", self.source.name, self.source.alias, version)
        self.swap(self.source.load(version))
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception as e:  # a registry or load failure must not stop the endpoint
                log.warning("reload check of %s failed, still serving version %s: %s", self.source.target,
                            self.serving_version(), str(e).splitlines()[0] if str(e) else type(e).__name__)
