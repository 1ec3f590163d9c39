"""Many adapters on one base (`ftflow serve BASE --adapter NAME=models:/X@champion`): the base is loaded once, each
registered LoRA version's adapter (`trained_adapter/` in its folder, beside the merged weights) is attached to it by
name, and a request's `model` picks one. Rows of different adapters share the decode batch (PEFT's mixed-batch
`adapter_names`, ftcore/serving/decoding.py), so no adapter queues behind another.

- **Which base.** An adapter is attached only to the base it was trained on: the version's merged weights must equal
  the served base's weights plus the adapter's delta (checked on the first LoRA modules, with PEFT's own delta), and
  its weights the adapter leaves alone must equal the base's (the largest ones: the embeddings). Anything else is a
  one-line refusal naming both.
- **Memory.** At most `adapters.max_loaded` adapters are attached; one more evicts the least recently used, which
  loads again when asked for. An adapter is detached only when no request holds it: each load gets a PEFT name of its
  own (`NAME--vVERSION--N`), so a request already decoding with one keeps it to its end.
- **Alias moves.** An adapter named by alias follows it: every `reload_interval_s` the registry is asked, and a moved
  alias loads the new version; requests from then on get it, those decoding finish with the old one.
- **Every version of a registered model** (`--all-versions MODEL`): each version that is a LoRA adapter of this base
  is the adapter `MODEL/VERSION`, loaded when first asked for; versions registered later join at the next registry
  check, deleted ones leave; a version that is no adapter of this base is passed over with one logged line.
- **Run time.** `POST /admin/adapters` {name, uri} loads (or replaces) one, `DELETE /admin/adapters/NAME` unloads
  it; both need the admin token (ftcore/serving/app.py).

The model is changed only on the model thread, between two decode steps (`DecodeLoop.between_steps`)."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import warnings
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path

from ftcore.errors import UserError
from ftcore.models.config import MODEL_URI
from ftcore.models.registered import model_folder, pin_reference
from ftcore.serving.engine import Engine
from ftcore.serving.errors import ApiError

log = logging.getLogger("ftflow.serve")
ADAPTER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ADAPTER_DIR = "trained_adapter"  # where the train stage keeps a mergeable adapter beside the merged weights
UNTOUCHED_CHECKED = 3  # the base's largest tensors an adapter leaves alone, compared with the version's
DELTAS_CHECKED = 2  # LoRA modules whose base + delta is compared with the version's merged weight


@dataclass
class Adapter:
    """One adapter attached to the base: `peft_name` is what rows name it by in a batch."""

    name: str
    uri: str
    version: str
    peft_name: str
    aliases: tuple[str, ...] = ()
    prompting: object = None  # how its version's training prompts were written (chats are rendered so)


@dataclass(frozen=True)
class Target:
    """What answers a request: an engine, or an adapter on its base. Its name and version label the response."""

    engine: Engine
    adapter: Adapter | None = None

    @property
    def name(self) -> str:
        return self.adapter.name if self.adapter else self.engine.name

    @property
    def version(self) -> str:
        return self.adapter.version if self.adapter else self.engine.version

    @property
    def peft_name(self) -> str | None:
        return self.adapter.peft_name if self.adapter else None


def parse_adapter(text: str) -> tuple[str, str]:
    """`NAME=models:/X@ALIAS` (or `models:/X/VERSION`) as (name, uri); a bad one is a one-line error."""
    name, sep, uri = text.partition("=")
    if not sep or not ADAPTER_NAME.match(name) or not MODEL_URI.match(uri):
        raise UserError(f"--adapter {text!r}: give NAME=models:/MODEL@ALIAS or NAME=models:/MODEL/VERSION, NAME of "
                        "letters, digits, _ and - (what requests send as `model`)")
    return name, uri


class AdapterSet:
    """The adapters a server answers with, on its base engine. `between_steps(fn)` runs fn on the model thread
    between decode steps and returns its result; `in_use()` (model thread) names the adapters of rows decoding or
    waiting to."""

    def __init__(self, engine, max_loaded: int, between_steps, in_use, base_folder: Path):
        self.engine, self.max_loaded, self.base_folder = engine, max_loaded, base_folder
        self._between_steps, self._in_use = between_steps, in_use
        self.known: dict[str, str] = {}  # name -> uri, loaded or not
        self.loaded: OrderedDict[str, Adapter] = OrderedDict()  # least recently used first
        self._holders: Counter[str] = Counter()  # peft name -> requests holding it (event loop only)
        self._doomed: set[str] = set()  # peft names to detach once nothing holds them
        self._lock = asyncio.Lock()  # one load at a time
        self._numbers = itertools.count(1)
        self._detaching: set[asyncio.Task] = set()
        self.every_version: list[str] = []  # registered models whose every version is an adapter (MODEL/VERSION)
        self._passed_over: set[str] = set()  # their versions' uris that are no adapter of this base, or unloaded
        self.on_change = None  # metrics: called with the number attached

    # ---- requests

    async def acquire(self, name: str) -> Adapter:
        """The adapter `name`, loaded if it was evicted, held until `release`: it is not detached meanwhile."""
        if name not in self.known:
            raise self.unknown(name)
        async with self._lock:
            adapter = self.loaded.get(name) or await self._load(name, self.known[name])
            self.loaded.move_to_end(name)
            self._holders[adapter.peft_name] += 1
        return adapter

    def release(self, adapter: Adapter) -> None:
        self._holders[adapter.peft_name] -= 1
        if adapter.peft_name in self._doomed and not self._holders[adapter.peft_name]:
            self._detach_later(adapter.peft_name)

    def listing(self) -> list[dict]:
        """What /v1/models shows of each adapter."""
        return [self.entry(name) for name in sorted(self.known)]

    def entry(self, name: str) -> dict:
        adapter = self.loaded.get(name)
        return {"id": name, "version": adapter.version if adapter else "", "variant": "adapter",
                "aliases": list(adapter.aliases) if adapter else [], "serving": False,
                "adapter_of": f"{self.engine.name}/{self.engine.version}", "uri": self.known[name],
                "loaded": adapter is not None}

    def unknown(self, name: str) -> ApiError:
        served = ", ".join(sorted(self.known)) or "none"
        return ApiError(404, f"model: {name!r} is no adapter of this server (its adapters: {served}), nor "
                             "NAME@ALIAS or NAME/VERSION of the served model; GET /v1/models lists them",
                        "not_found_error", "model", "model_not_found")

    # ---- loading and unloading

    def preload(self, name: str, uri: str) -> Adapter:
        """Load an adapter before the server starts (no model thread yet: attached here); UserError when it cannot
        be."""
        try:
            self._check_name(name)
            version, folder = self._fetch(uri)
            check_same_base(folder, self.base_folder, uri)
            adapter = self._new(name, uri, version, folder)
            self._attach(folder, adapter)
        except ApiError as e:
            raise UserError(f"--adapter {name}={uri}: {e.message.removeprefix('uri: ')}") from None
        self.known[name], self.loaded[name] = uri, adapter
        if len(self.loaded) > self.max_loaded:
            raise UserError(f"--adapter: {len(self.loaded)} adapters, over adapters.max_loaded "
                            f"{self.max_loaded}; raise it in the serving config")
        self._changed()
        return adapter

    async def add(self, name: str, uri: str) -> Adapter:
        """Load `uri` as adapter `name` (replacing the one of that name); ApiError 400/404 when it cannot be."""
        self._check_name(name)
        async with self._lock:
            adapter = await self._load(name, uri)
        self.known[name] = uri
        return adapter

    async def remove(self, name: str) -> None:
        if name not in self.known:
            raise self.unknown(name)
        if self.model_of(name) is not None:  # else the next registry check would adopt it again
            self._passed_over.add(self.known[name])
        del self.known[name]
        if (adapter := self.loaded.pop(name, None)) is not None:
            self._doom(adapter)
        self._changed()

    async def follow_registry_every(self, interval_s: float) -> None:
        """Every `interval_s`, adapters named by alias load the version their alias points to now, and the versions
        of `every_version`'s models come and go with the registry (runs until cancelled; 0: never)."""
        if interval_s <= 0:
            return
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.follow_aliases()
                await self.follow_versions()
            except Exception as e:  # a registry or load failure must not stop the endpoint
                log.warning("adapter registry check failed, still serving the adapters loaded: %s",
                            str(e).splitlines()[0] if str(e) else type(e).__name__)

    # ---- every version of a registered model

    def adopt_versions(self, model: str) -> None:
        """Before the server starts: every version of `model` that is a LoRA adapter of this base becomes the
        adapter MODEL/VERSION (attached when first asked for); UserError when `model` is not registered."""
        from mlflow.exceptions import MlflowException

        from ftcore.versions import registered_versions

        try:
            listed = registered_versions(model)
        except MlflowException:
            raise UserError(f"--all-versions {model}: no registered model of that name (`ftflow ui` lists them "
                            "in MLflow's Models tab)") from None
        self.every_version.append(model)
        self.known.update(self._new_versions(model, listed))

    async def follow_versions(self) -> None:
        """The versions of `every_version`'s models registered since the last check join; deleted ones leave."""
        from ftcore.versions import registered_versions

        for model in self.every_version:
            listed = await asyncio.to_thread(registered_versions, model)
            registered = {f"{model}/{v['version']}" for v in listed}
            for name in [n for n in self.known if self.model_of(n) == model and n not in registered]:
                log.info("adapter %s: the version was deleted from the registry; unloading it", name)
                await self.remove(name)
            for name, uri in (await asyncio.to_thread(self._new_versions, model, listed)).items():
                log.info("adapter %s: a new version of %s; loaded when first asked for", name, model)
                self.known[name] = uri

    def _new_versions(self, model: str, listed: list[dict]) -> dict[str, str]:
        """{MODEL/VERSION: uri} of the `listed` versions of `model` not known yet that are LoRA adapters of this
        base; each other one is logged once and passed over. Blocking (files): not on the event loop."""
        found = {}
        for v in listed:
            name, uri = f"{model}/{v['version']}", f"models:/{model}/{v['version']}"
            if name in self.known or uri in self._passed_over:
                continue
            try:
                _, folder = self._fetch(uri)
                check_same_base(folder, self.base_folder, uri)
            except ApiError as e:
                log.warning("%s is not served as an adapter: %s", name, e.message.removeprefix("uri: "))
                self._passed_over.add(uri)
                continue
            found[name] = uri
        return found

    def model_of(self, name: str) -> str | None:
        """The `every_version` model whose version the adapter `name` is (MODEL/VERSION), if any."""
        model = name.rpartition("/")[0]
        return model if model in self.every_version else None

    async def follow_aliases(self) -> list[str]:
        """Load the version each alias-named adapter's alias points to now, where it moved; the names reloaded."""
        moved = []
        for name, adapter in list(self.loaded.items()):
            match = MODEL_URI.match(adapter.uri)
            if match["alias"] is None:
                continue
            version = await asyncio.to_thread(lambda u=adapter.uri: str(pin_reference(u, "adapter").version))
            if version != adapter.version and self.known.get(name) == adapter.uri:
                log.info("adapter %s: %s moved to version %s: loading it", name, adapter.uri, version)
                async with self._lock:
                    await self._load(name, adapter.uri)
                moved.append(name)
        return moved

    async def _load(self, name: str, uri: str) -> Adapter:
        """Fetch, check and attach `uri` as `name`; the adapter it replaces and any beyond the bound are detached
        once no request holds them. Caller holds the lock."""
        version, folder = await asyncio.to_thread(self._fetch, uri)
        adapter = self._new(name, uri, version, folder)
        await asyncio.to_thread(check_same_base, folder, self.base_folder, uri)
        await self._between_steps(lambda: self._attach(folder, adapter))
        if (old := self.loaded.pop(name, None)) is not None:
            self._doom(old)
        self.loaded[name] = adapter
        while len(self.loaded) > self.max_loaded:
            _, evicted = self.loaded.popitem(last=False)
            log.info("adapter %s evicted (adapters.max_loaded %d); it loads again when asked for", evicted.name,
                     self.max_loaded)
            self._doom(evicted)
        self._changed()
        return adapter

    def _new(self, name: str, uri: str, version: str, folder: Path) -> Adapter:
        from ftcore.models.prompting import read_prompting

        alias = MODEL_URI.match(uri)["alias"]
        return Adapter(name, uri, version, f"{name}--v{version}--{next(self._numbers)}", (alias,) if alias else (),
                       read_prompting(folder, self.engine.tokenizer))

    @staticmethod
    def _check_name(name: str) -> None:
        if not ADAPTER_NAME.match(name):
            raise ApiError(400, f"name: {name!r}: use letters, digits, _ and - (at most 64)", param="name",
                           code="invalid_adapter_name")

    def _fetch(self, uri: str) -> tuple[str, Path]:
        try:
            ref = pin_reference(uri, "uri")
            folder = model_folder(ref)
        except UserError as e:
            message = str(e) if str(e).startswith("uri: ") else f"uri: {e}"  # pin_reference names the field
            raise ApiError(404, message, "not_found_error", "uri", "model_not_found") from None
        adapter = folder / ADAPTER_DIR
        if not (adapter / "adapter_config.json").is_file():
            raise ApiError(400, f"uri: {uri} holds no LoRA adapter (no {ADAPTER_DIR}/ in its folder: it was trained "
                                "with full fine-tuning or an adapter that cannot be merged); serve it on its own with "
                                "`ftflow serve`", param="uri", code="not_an_adapter")
        config = json.loads((adapter / "adapter_config.json").read_text())
        if config.get("peft_type") != "LORA" or config.get("use_dora"):
            kind = "DoRA" if config.get("use_dora") else config.get("peft_type")
            raise ApiError(400, f"uri: {uri} is a {kind} adapter; rows of several adapters share a batch with LoRA "
                                "adapters only: serve it on its own with `ftflow serve`", param="uri",
                           code="adapter_not_supported")
        return str(ref.version), folder

    def _attach(self, folder: Path, adapter: Adapter) -> None:
        """On the model thread: the adapter's weights added to the base (wrapping it in PEFT the first time), then
        checked against the version's merged weights."""
        from peft import PeftModel

        path = str(folder / ADAPTER_DIR)
        model = self.engine.model
        if isinstance(model, PeftModel):
            model.load_adapter(path, adapter_name=adapter.peft_name, is_trainable=False,
                               torch_device=self.engine.device)
        else:
            model = PeftModel.from_pretrained(model, path, adapter_name=adapter.peft_name, is_trainable=False,
                                              torch_device=self.engine.device)
            self.engine.model = model.eval()
            self.engine.routes_adapters = True  # every row names its adapter from now on, the base's included
        try:
            check_deltas(model, adapter.peft_name, folder, adapter.uri)
        except ApiError:
            model.delete_adapter(adapter.peft_name)
            raise

    def _doom(self, adapter: Adapter) -> None:
        self._doomed.add(adapter.peft_name)
        if not self._holders[adapter.peft_name]:
            self._detach_later(adapter.peft_name)

    def _detach_later(self, peft_name: str) -> None:
        task = asyncio.ensure_future(self._detach_when_unused(peft_name))
        self._detaching.add(task)  # a task nothing refers to may be collected before it runs
        task.add_done_callback(self._detaching.discard)

    async def _detach_when_unused(self, peft_name: str) -> None:
        """Detach once no row decodes with it (a request that left is dropped from its batch at the next step)."""
        def detach() -> bool:
            if peft_name in self._in_use():
                return False
            with warnings.catch_warnings():  # PEFT's note that another adapter is now "active": rows name theirs
                warnings.filterwarnings("ignore", message=".*was active which is now deleted")
                self.engine.model.delete_adapter(peft_name)
            return True

        while peft_name in self._doomed and not self._holders[peft_name]:
            if await self._between_steps(detach):
                self._doomed.discard(peft_name)
                return
            await asyncio.sleep(0.05)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(len(self.loaded))


# ---- is it this base's adapter?


def check_same_base(version: Path, base: Path, uri: str) -> None:
    """The tensors the adapter leaves alone, the largest first, must be the base's: a version trained on another
    base differs there (its embeddings, say). 400 otherwise."""
    import torch

    touched = _adapted_modules(version / ADAPTER_DIR)
    with _tensors(base) as base_tensors, _tensors(version) as version_tensors:
        shapes = {name: base_tensors.shape(name) for name in base_tensors.names()}
        if set(shapes) != set(version_tensors.names()):
            raise _other_base(uri, base, "its weights have other names (another architecture)")
        untouched = [n for n in shapes if n.rsplit(".", 1)[0] not in touched]
        largest = sorted(untouched, key=lambda n: (-_numel(shapes[n]), n))[:UNTOUCHED_CHECKED]
        for name in largest:
            mine, theirs = base_tensors.get(name), version_tensors.get(name)
            if mine.shape != theirs.shape or not torch.allclose(mine.float(), theirs.float(), atol=1e-6):
                raise _other_base(uri, base, f"its {name} differs from the base's")


def check_deltas(model, peft_name: str, version: Path, uri: str) -> None:
    """For the first LoRA modules: base weight + PEFT's delta of the adapter = the version's merged weight."""
    import torch

    checked = 0
    with _tensors(version) as merged:
        names = set(merged.names())
        for module_name, module in model.named_modules():
            if checked == DELTAS_CHECKED or not hasattr(module, "get_delta_weight"):
                continue
            if peft_name not in getattr(module, "lora_A", {}):
                continue
            key = module_name.removeprefix("base_model.model.") + ".weight"
            if key not in names:
                continue
            expected = module.get_base_layer().weight.float() + module.get_delta_weight(peft_name).float()
            if not torch.allclose(expected, merged.get(key).float(), atol=1e-4, rtol=1e-3):
                raise _other_base(uri, None, f"its merged {key} is not the served base's plus the adapter")
            checked += 1


def _other_base(uri: str, base: Path | None, why: str) -> ApiError:
    return ApiError(400, f"uri: {uri} was not trained on the served base{f' ({base})' if base else ''}: {why}; "
                         "serve it on the base it was trained on", param="uri", code="adapter_base_mismatch")


def _adapted_modules(adapter: Path) -> set[str]:
    """The modules the adapter changes (its LoRA layers and modules_to_save), by the base model's names."""
    from safetensors import safe_open

    modules = set()
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
        keys = f.keys()
        for key in keys:
            name = key.removeprefix("base_model.model.")
            name = re.split(r"\.(lora_[AB]|lora_embedding_[AB]|lora_magnitude_vector|modules_to_save)\b", name)[0]
            modules.add(name.rsplit(".weight", 1)[0].rsplit(".bias", 1)[0])
    return modules


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


class _tensors:
    """The tensors of a model folder's safetensors (sharded or not), read one at a time."""

    def __init__(self, folder: Path):
        index = folder / "model.safetensors.index.json"
        files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else \
            ["model.safetensors"]
        self.paths = [folder / f for f in files]

    def __enter__(self):
        from safetensors import safe_open

        self._files = [safe_open(str(p), "pt") for p in self.paths]
        self._where = {name: f for f in self._files for name in list(f.keys())}
        return self

    def __exit__(self, *exc) -> None:
        self._files = []

    def names(self):
        return self._where.keys()

    def shape(self, name: str):
        return self._where[name].get_slice(name).get_shape()

    def get(self, name: str):
        return self._where[name].get_tensor(name)

