"""Which model answers a request: the `model` field picks another version (`NAME/VERSION`), an alias
(`NAME@ALIAS`) or an export (`NAME/VERSION:VARIANT`) of the served registered model, so the playground can set a
challenger beside the champion. Left out, or naming the served model itself, it is the engine serving now, with no
registry call: existing clients are unaffected. Other versions load on first use and stay in a small cache, least
recently used out first; only the served model's own versions load, so a client cannot fill memory with arbitrary
models."""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from dataclasses import replace

from ftcore import versions
from ftcore.errors import UserError
from ftcore.models.registered import pin_reference
from ftcore.serving.engine import Engine
from ftcore.serving.errors import ApiError
from ftcore.serving.source import ModelSource

# NAME@ALIAS or NAME/VERSION, then optionally :VARIANT; a models:/ prefix is allowed (MODEL_URI's form).
MODEL_ID = re.compile(r"^(?:models:/)?(?P<name>[^/@:]+)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>\d+))"
                      r"(?::(?P<variant>[a-z0-9_]+))?$")
VARIANTS = ("model", "adapter", "merged", "merged_bf16", "int8")


class ModelPicker:
    def __init__(self, source: ModelSource, max_loaded: int):
        self.source, self.max_loaded = source, max_loaded
        self._loaded: OrderedDict[tuple[str, str], Engine] = OrderedDict()
        self._lock = asyncio.Lock()  # one load at a time: two at once would hold two more models in memory

    def served_ids(self, engine: Engine) -> set[str]:
        """What names the engine serving now: its name, the URI it was served by, and its version's id."""
        return {engine.name, self.source.target, _model_id(engine.name, engine.version, engine.variant)}

    async def engine(self, model: str | None, serving: Engine) -> Engine:
        """The engine that answers `model`; 400 for a malformed id, 404 for one this server cannot load."""
        if model is None or model in self.served_ids(serving):
            return serving
        version, variant = self._resolve(model)
        if (version, variant) == (serving.version, serving.variant):
            return serving
        key = (version, variant)
        async with self._lock:
            if key not in self._loaded:
                self._loaded[key] = await asyncio.to_thread(self._load, model, version, variant)
                while len(self._loaded) > self.max_loaded:
                    self._loaded.popitem(last=False)
            self._loaded.move_to_end(key)
            return self._loaded[key]

    def listing(self, serving: Engine) -> list[dict]:
        """The models a request may name: the serving one first, then each registered version with its aliases and
        exports (a local folder serves itself only)."""
        first = {"id": _model_id(serving.name, serving.version, serving.variant), "version": serving.version,
                 "variant": serving.variant, "aliases": [], "serving": True}
        if self.source.folder is not None:
            return [first | {"id": serving.name}]
        entries = []
        for v in versions.registered_versions(self.source.name):
            for variant in ["model", *v["exports"]]:
                serving_it = (v["version"], variant) == (serving.version, serving.variant)
                entries.append({"id": _model_id(self.source.name, v["version"], variant), "version": v["version"],
                                "variant": variant, "aliases": v["aliases"], "serving": serving_it})
        return entries or [first]

    def _resolve(self, model: str) -> tuple[str, str]:
        """(version, variant) of a model id naming the served registered model; an alias is looked up now."""
        match = MODEL_ID.match(model)
        if match is None:
            raise ApiError(400, f"model: {model!r} is not NAME@ALIAS, NAME/VERSION or either with :VARIANT; GET "
                                "/v1/models lists what this server answers", param="model", code="invalid_model")
        if self.source.folder is not None or match["name"] != self.source.name:
            raise ApiError(404, f"model: this server answers {self.source.target} and its versions only, not "
                                f"{model!r}; serve that one with `ftflow serve`", "not_found_error", "model",
                           "model_not_found")
        variant = match["variant"] or "model"
        if variant not in VARIANTS:
            raise ApiError(400, f"model: {variant!r} is not a variant; use one of {', '.join(VARIANTS)}",
                           param="model", code="invalid_model")
        ref = match["alias"] and f"models:/{match['name']}@{match['alias']}"
        try:
            version = match["version"] or str(pin_reference(ref, "model").version)
        except UserError as e:
            raise ApiError(404, str(e), "not_found_error", "model", "model_not_found") from None
        return version, variant

    def _load(self, model: str, version: str, variant: str) -> Engine:
        try:
            return replace(self.source, variant=variant).load(version)
        except UserError as e:
            raise ApiError(404, f"model: {model!r}: {e}", "not_found_error", "model", "model_not_found") from None


def _model_id(name: str, version: str, variant: str) -> str:
    return f"{name}/{version}" + ("" if variant == "model" else f":{variant}")
