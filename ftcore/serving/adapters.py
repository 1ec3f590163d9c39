"""Many adapters on one base (`ftflow serve BASE --adapter NAME=models:/X@champion`): the base is loaded once, each
registered LoRA version's adapter (`trained_adapter/` in its folder, beside the merged weights) is attached to it by
name, and a request's `model` picks one. Rows of different adapters share the decode batch (PEFT's mixed-batch
`adapter_names`, ftcore/serving/decoding.py), so no adapter queues behind another.

- **Which base.** An adapter is attached only to the base it was trained on: the version's merged weights must equal
  the served base's weights plus the adapter's delta (checked on the first LoRA modules), and its weights the adapter
  leaves alone must equal the base's (the largest ones: the embeddings), both read from the files before attaching
  (ftcore/models/same_base.py). Anything else is a one-line refusal naming both.
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
from ftcore.models.same_base import other_base
from ftcore.serving.engine import Engine
from ftcore.serving.errors import ApiError

log = logging.getLogger("ftflow.serve")
ADAPTER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ADAPTER_DIR = "trained_adapter"  # where the train stage keeps a mergeable adapter beside the merged weights


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
    """400 unless the version was trained on the served base (ftcore/models/same_base.py)."""
    if (why := other_base(version, version / ADAPTER_DIR, base)) is not None:
        raise _other_base(uri, base, why)


def _other_base(uri: str, base: Path | None, why: str) -> ApiError:
    return ApiError(400, f"uri: {uri} was not trained on the served base{f' ({base})' if base else ''}: {why}; "
                         "serve it on the base it was trained on", param="uri", code="adapter_base_mismatch")
