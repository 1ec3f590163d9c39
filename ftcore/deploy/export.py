"""Deploy exports of a registered version (docs/deploy.md): the adapter alone, the base a LoRA adapter is served on
(ftcore/deploy/base_export.py), the model merged in float32 or bfloat16, int8 weights for CPU inference, GGUF files
(ftcore/deploy/gguf.py) and an ONNX graph (ftcore/deploy/onnx_export.py), each logged as an MLflow pyfunc model of
the version's run (`exports/<kind>`) and recorded in the version's tags (`export.<kind>.uri`, `.bytes`, `.hash`; for
int8 its size ratio to float32 and its metric changes on the test split; for bfloat16, GGUF, ONNX and the base their
logits against the float32 model's, `.check`).

An export is built from the version's model folder, which the train stage wrote in one of three forms: merged
weights with `trained_adapter/` (lora, dora, qlora, ia3, loha, lokr), base weights with `adapter/` (prefix, prompt,
p_tuning and bottleneck adapters, which cannot be merged), or full fine-tuned weights (full). The method is read
from the folder (the adapter's PEFT config), so any version can be exported, whichever recipe made it.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

import pandas as pd

from ftcore import tracking, versions
from ftcore.deploy import base_export, gguf, onnx_export
from ftcore.deploy.config import ExportKind
from ftcore.deploy.fidelity import Fidelity, LogitCheck, compare_logits, scorable_metrics, split_scores
from ftcore.deploy.quantize import float32_bytes, weight_bytes, write_int8
from ftcore.errors import UserError
from ftcore.hashing import file_hashes, hash_dir, hash_files
from ftcore.models.config import MethodConfig
from ftcore.models.load import (
    load_tokenizer,
    load_trained,
    reload_model,
    reload_processing,
    runs_own_code,
    saved_classes,
)
from ftcore.models.peft_methods import (
    EXPORTED_ADAPTER,
    TRAINED_ADAPTER,
    attach_adapter,
    can_merge,
    unmerged_base,
)
from ftcore.models.prompting import RECORD as PROMPTING
from ftcore.models.registered import ModelRef, model_folder, pin_reference
from ftcore.paths import home
from ftcore.progress import progress_bar

log = logging.getLogger(__name__)

MANIFEST = "export.json"  # in an export's folder: its kind, method, the version it came from, its content hash
EXPORTS = "exports"  # the run's artifact folder holding one MLflow model per kind
WEIGHTS = "weights"  # an export's folder inside its MLflow model (artifacts/weights)
MERGED_DTYPES = {"merged": "float32", "merged_bf16": "bfloat16"}
# gguf_<file type> -> the file type (ftcore/deploy/gguf.py TYPES)
GGUF_KINDS = {kind: kind.removeprefix("gguf_") for kind in get_args(ExportKind) if kind.startswith("gguf_")}
# PEFT's adapter types (adapter_config.json's peft_type) -> ftflow's method names.
PEFT_METHODS = {"LORA": "lora", "IA3": "ia3", "LOHA": "loha", "LOKR": "lokr", "PREFIX_TUNING": "prefix",
                "PROMPT_TUNING": "prompt", "P_TUNING": "p_tuning", "BOTTLENECK": "adapter"}
PROMPT_LEARNING = ("prefix", "prompt", "p_tuning")
LORA_METHODS = ("lora", "qlora")  # as a recipe names them; a version's folder reads as lora for both
# Quantised: scored on the test split beside the float32 model, the loss judged against deploy.export_tolerance.
SCORED_KINDS = ("int8", "gguf_q8_0", "gguf_q4_0")


@dataclass(frozen=True)
class VersionModel:
    """A version's model folder as exports see it: its method, its adapter folder, and whether its top-level weights
    are the trained model (merged or full) or the base an adapter kept apart is attached to."""

    folder: Path
    method: str
    adapter: Path | None
    merged: bool

    @classmethod
    def read(cls, folder: Path) -> VersionModel:
        for adapter, merged in ((folder / TRAINED_ADAPTER, True), (folder / EXPORTED_ADAPTER, False)):
            if adapter.is_dir():
                config = json.loads((adapter / "adapter_config.json").read_text())
                method = "dora" if config.get("use_dora") else PEFT_METHODS.get(config["peft_type"], "peft")
                return cls(folder, method, adapter, merged)
        return cls(folder, "full", None, True)

    def weight_files(self) -> list[Path]:
        """The files of the model as it is served: the top-level weights, and an adapter kept apart."""
        kept_apart = [] if self.merged or self.adapter is None else sorted(self.adapter.glob("*.safetensors"))
        return sorted(self.folder.glob("*.safetensors")) + kept_apart


@dataclass(frozen=True)
class ExportRecord:
    uri: str  # runs:/RUN/exports/<kind>: the MLflow pyfunc model
    bytes: int  # of its weight files
    hash: str  # content hash of its folder (without the manifest)


@dataclass(frozen=True)
class ExportReport:
    exports: dict[str, ExportRecord]
    int8_size_ratio: float | None = None  # int8 weight files / the float32 model's
    scores: dict[str, Fidelity] = field(default_factory=dict)  # each quantised export on the test split (with refs)
    checks: dict[str, LogitCheck] = field(default_factory=dict)  # bf16, GGUF, ONNX and base run beside float32

    def tags(self) -> dict[str, str]:
        tags = {}
        for kind, record in self.exports.items():
            tags |= {f"export.{kind}.uri": record.uri, f"export.{kind}.bytes": str(record.bytes),
                     f"export.{kind}.hash": record.hash}
        checks = {f"export.{kind}.check": sentence for kind, sentence in self.verdicts().items()}
        return tags | {k: f"{v:.6g}" for k, v in self.score_metrics().items()} | checks

    def metrics(self) -> dict[str, float]:
        sizes = {f"export.{kind}.mb": record.bytes / 2**20 for kind, record in self.exports.items()}
        return sizes | self.score_metrics() | self.check_metrics()

    def score_metrics(self) -> dict[str, float]:
        metrics = {} if self.int8_size_ratio is None else {"export.int8.size_ratio": self.int8_size_ratio}
        for kind, fidelity in self.scores.items():
            metrics |= {f"export.{kind}.{metric}.delta": delta for metric, delta in fidelity.deltas.items()}
            metrics[f"export.{kind}.within_tolerance"] = float(fidelity.within_tolerance)
        return metrics

    def check_metrics(self) -> dict[str, float]:
        return {f"export.{kind}.{metric}": value for kind, check in self.checks.items()
                for metric, value in check.metrics().items()}

    def verdicts(self) -> dict[str, str]:
        """kind -> its check in one sentence (the tag `export.<kind>.check`): its logits beside the float32
        model's, its scores on the test split, or both; for the kinds checked."""
        verdicts = {}
        for kind in self.exports:
            parts = [self.checks[kind].describe()] if kind in self.checks else []
            if kind in self.scores:
                parts.append(self.scores[kind].describe())
            elif kind in SCORED_KINDS:
                parts.append(f"{kind} not scored: the test split has no references")
            if parts:
                verdicts[kind] = "; ".join(parts)
        return verdicts

    def beyond_tolerance(self) -> list[str]:
        return [kind for kind, fidelity in self.scores.items() if not fidelity.within_tolerance]

    def as_dict(self) -> dict:
        """The exports, and each checked one's figures and sentence (`ftflow export --json`)."""
        numbers = self.score_metrics() | self.check_metrics()
        checks = {kind: {key.removeprefix(f"export.{kind}."): value for key, value in numbers.items()
                         if key.startswith(f"export.{kind}.")} | {"check": sentence}
                  for kind, sentence in self.verdicts().items()}
        return {"exports": {kind: vars(record) for kind, record in self.exports.items()}, "checks": checks}


def unavailable(kind: str, model: VersionModel) -> str | None:
    """Why the version cannot give this kind of export, in one line; None when it can."""
    problem = _unavailable(kind, model.method, model.adapter is not None, model.merged)
    if problem is not None:
        return problem
    if kind == "base":  # a LoRA version (_unavailable): it has an adapter
        problem = base_export.refusal(model.adapter)
    elif kind in GGUF_KINDS:
        problem = gguf.refusal(model.folder)
    elif kind == "onnx":
        problem = onnx_export.refusal(model.folder)
    return None if problem is None else f"{kind}: {problem}"


def planned_export_problems(method: MethodConfig, kinds: list[str]) -> list[str]:
    """What check_kinds will refuse for a version trained with `method`: the recipe's exports checked before any
    stage runs. The train stage merges the adapters that can be merged and keeps the others apart."""
    full = method.name == "full"
    merged = full or can_merge(method)
    return [problem for kind in kinds if (problem := _unavailable(kind, method.name, not full, merged))]


def _unavailable(kind: str, method: str, has_adapter: bool, merged: bool) -> str | None:
    if kind == "adapter" and not has_adapter:
        return f"method {method} has no adapter: it trains every weight; export merged, merged_bf16 or int8"
    if kind == "adapter" and method == "dora":
        return ("method dora: the adapter alone cannot be loaded back, since the base it attaches to cannot be "
                "recovered from the merged version (DoRA's merge rescales by a norm that is not saved); export "
                "merged, merged_bf16 or int8")
    if kind == "base" and method not in LORA_METHODS:
        return (f"method {method}: a base export is the base of a LoRA adapter, and vLLM's --lora-modules serves "
                "LoRA alone; train with method lora to serve the version as an adapter")
    if (kind in MERGED_DTYPES or kind in GGUF_KINDS or kind == "onnx") and not merged:
        if method in PROMPT_LEARNING:
            return (f"method {method} is prompt learning: its virtual tokens cannot be merged into the base; "
                    "export adapter or int8, or serve the version as it is")
        return (f"method {method} (a bottleneck adapter) cannot be merged: a non-linearity sits between its "
                "projections; export adapter or int8, or serve the version as it is")
    return None


def check_kinds(model: VersionModel, kinds: list[str]) -> None:
    problems = [problem for kind in kinds if (problem := unavailable(kind, model))]
    if problems:
        raise UserError("exports: " + "; ".join(problems))


def export_version(folder: Path, name: str, version: str, run_id: str, kinds: list[str], test: pd.DataFrame | None,
                   tolerance: float) -> ExportReport:
    """Build each kind of export of the version whose model is `folder`, log it into the version's run
    (`exports/<kind>`) and record it in the version's tags. Quantised kinds are scored against the float32 model on
    `test`. A terminal shows the exports done of those asked for, and the one being made."""
    if not kinds:
        return ExportReport({})
    model = VersionModel.read(Path(folder))
    check_kinds(model, kinds)
    classifier = saved_classes(model.folder) is not None
    records, ratio, scores, checks = {}, None, {}, {}
    scorer = QuantisedScorer(model, classifier, test, tolerance)
    prompts = check_prompts(test, model.folder) if LOGIT_CHECKS.keys() & set(kinds) else []
    with (scratch(".exports.") as work,
          progress_bar(len(kinds), f"exporting models:/{name}/{version}", unit="exports") as bar):
        for kind in kinds:
            bar.set_postfix_str(kind)
            out = Path(work) / kind / WEIGHTS
            write_export(kind, model, out, f"models:/{name}/{version}")
            if kind == "int8":
                ratio = weight_bytes(out) / float32_bytes(model.weight_files())
            if kind in SCORED_KINDS and (fidelity := scorer.fidelity(kind, out)) is not None:
                scores[kind] = fidelity
            if kind in LOGIT_CHECKS:
                checks[kind] = LOGIT_CHECKS[kind](model, out, prompts)
            uri = log_export(run_id, kind, out, classifier, test)
            records[kind] = ExportRecord(uri, weight_bytes(out), str(export_hash(out)))
            bar.update()
    report = ExportReport(records, ratio, scores, checks)
    for kind in report.beyond_tolerance():
        log.warning("%s/%s: %s", name, version, scores[kind].describe())
    # Each check's tag names the command that makes the export and its check again.
    again = {f"export.{kind}.check_command": f"ftflow export models:/{name}/{version} --kind {kind}"
             for kind in report.verdicts()}
    versions.set_version_tags(name, version, report.tags() | again)
    return report


def export_registered(ref: ModelRef, kinds: list[str], tolerance: float) -> ExportReport:
    """`export_version` for a pinned registered version (`ftflow export`): its files and its test split come from
    the registry and its run."""
    run_id = versions.version_run_id(str(ref.name), str(ref.version))
    return export_version(model_folder(ref), str(ref.name), str(ref.version), run_id, kinds,
                          version_test_split(run_id), tolerance)


def export_to(ref: ModelRef, kind: str, dst: Path, tolerance: float,
              base: Path | None = None) -> tuple[Path, ExportReport | None]:
    """The version's `kind` export as the folder `dst` (what a serving container mounts), made first if the version
    has none yet (then its report, else None). The folder is checked against the export's content hash. `base`: the
    folder of a base export an adapter export will be served on, refused unless the version was trained on it."""
    name, version = str(ref.name), str(ref.version)
    if base is not None:
        model = VersionModel.read(model_folder(ref))
        check_kinds(model, [kind])
        base_export.check_trained_on(model.folder, model.adapter, Path(base).expanduser().resolve(), ref.uri)
    dst = Path(dst).expanduser().resolve()
    if dst.is_file() or (dst.is_dir() and any(dst.iterdir()) and not (dst / MANIFEST).is_file()):
        # fetch_export replaces a folder that holds another export; anything else is the user's.
        raise UserError(f"--to: {dst} holds other files; give a new or empty folder")
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--to: cannot create {dst.parent}: {e.strerror}; give a folder you can write") from None
    made = None
    if f"export.{kind}.hash" not in versions.version_tags(name, version):
        made = export_registered(ref, [kind], tolerance)
    return fetch_export(name, version, kind, dst), made


def version_test_split(run_id: str) -> pd.DataFrame | None:
    """The test rows of the dataset the run logged (the clean_balance stage's), or None when it logged none."""
    from ftcore.data.retained import DATASET_ARTIFACT

    with scratch(".dataset.") as tmp:
        try:
            dataset = pd.read_parquet(tracking.download_run_artifact(run_id, DATASET_ARTIFACT, Path(tmp)))
        except FileNotFoundError:
            return None
    return dataset[dataset["split"] == "test"].drop(columns="split").reset_index(drop=True)


def scratch(prefix: str) -> tempfile.TemporaryDirectory:
    """A temporary folder in FTFLOW_HOME (on the disk the exports end up on, not a small /tmp)."""
    home().mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix=prefix, dir=home())


# ---------------------------------------------------------------------------------------------------------------
# Writing, logging, fetching and loading one export


def write_export(kind: str, model: VersionModel, out: Path, source: str) -> None:
    """The export's folder: weights and tokenizer, the version's prompting record (the pyfunc model writes chats as
    the model was trained on them), and the manifest (`source`: the version it came from, where an adapter export
    finds its base)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if kind == "adapter":
        shutil.copytree(model.adapter, out)
        reload_processing(model.folder).save_pretrained(out)
    elif kind == "base":
        base_export.write_base(model.folder, model.adapter, out)
    elif kind in MERGED_DTYPES:
        import torch

        weights = reload_model(model.folder, saved_classes(model.folder),
                               dtype=getattr(torch, MERGED_DTYPES[kind]))
        weights.save_pretrained(out, safe_serialization=True)
        reload_processing(model.folder).save_pretrained(out)
    elif kind in GGUF_KINDS:
        out.mkdir()
        file_type = GGUF_KINDS[kind]
        name = source.removeprefix("models:/").replace("/", "-v")
        gguf.write_gguf(model.folder, out / f"{name}-{file_type}.gguf", file_type, name)
        (out / "Modelfile").write_text(gguf.modelfile(f"{name}-{file_type}.gguf", model.folder))
    elif kind == "onnx":
        onnx_export.write_onnx(model.folder, out)
    else:
        write_int8(model.folder, out)
        if not model.merged:  # the adapter stays float32 beside the int8 base: it is small, and cannot be merged
            shutil.copytree(model.adapter, out / EXPORTED_ADAPTER)
    if (model.folder / PROMPTING).is_file():
        shutil.copy(model.folder / PROMPTING, out / PROMPTING)
    manifest = {"kind": kind, "method": model.method, "source": source, "hash": hash_dir(out)}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


def gguf_file(folder: Path) -> Path:
    return next(Path(folder).glob("*.gguf"))


def check_prompts(test: pd.DataFrame | None, folder: Path, count: int = 8) -> list[str]:
    """What a GGUF export is checked on: the first test questions as the model sees them, else plain prompts."""
    from ftcore.evaluation.language import eval_examples

    if test is None or test.empty or not ({"prompt", "messages"} & set(test.columns)):
        return list(gguf.PLAIN_PROMPTS)
    prompts = eval_examples(test.head(count), reload_processing(folder))["prompt"].astype(str).tolist()
    return [p for p in prompts if p] or list(gguf.PLAIN_PROMPTS)


def check_bf16(folder: Path, out: Path, prompts: list[str]) -> LogitCheck:
    """The bfloat16 export run in bfloat16, as vLLM runs it (`--dtype bfloat16`), beside the float32 model."""
    import torch

    reference, tokenizer = load_trained(folder)
    exported = reload_model(out, saved_classes(out), dtype=torch.bfloat16)
    return compare_logits(reference, tokenizer, exported, reload_processing(out), prompts,
                          "run in bfloat16 by transformers")


# The exports run beside the float32 model on the test prompts, by how each is run: (version, export folder, prompts).
LOGIT_CHECKS: dict[str, Callable[[VersionModel, Path, list[str]], LogitCheck]] = {
    "merged_bf16": lambda model, out, prompts: check_bf16(model.folder, out, prompts),
    "base": lambda model, out, prompts: base_export.check_base(model.folder, model.adapter, out, prompts),
    "onnx": lambda model, out, prompts: onnx_export.check_onnx(model.folder, out, prompts),
} | dict.fromkeys(GGUF_KINDS, lambda model, out, prompts: gguf.check_gguf(model.folder, gguf_file(out), prompts))


class QuantisedScorer:
    """Scores quantised exports and the version's own float32 model (once, when first needed) on the test split."""

    def __init__(self, model: VersionModel, classifier: bool, test: pd.DataFrame | None, tolerance: float):
        self.model, self.test, self.tolerance = model, test, tolerance
        self.metrics = () if test is None else scorable_metrics(test, classifier)
        self._float32: dict[str, float] | None = None

    def fidelity(self, kind: str, out: Path) -> Fidelity | None:
        """The export in `out` against the float32 model; None when the test split has no references."""
        if not self.metrics:
            return None
        if self._float32 is None:
            float32, tokenizer = load_trained(self.model.folder)
            self._float32 = split_scores(float32, tokenizer, self.test, self.metrics, "float32 model")
            del float32
        exported = split_scores(*load_export(out), self.test, self.metrics, f"{kind} export")
        return Fidelity(kind, self._float32, exported, self.metrics[0], self.tolerance)


def log_export(run_id: str, kind: str, folder: Path, classifier: bool, test: pd.DataFrame | None) -> str:
    """The export as an MLflow pyfunc model in the run, with its signature, an input example from the test split,
    pinned requirements and ftcore as code."""
    import ftcore
    from ftcore.deploy import pyfunc_model
    from ftcore.deploy.pyfunc import input_example, pip_requirements, signature

    return tracking.log_pyfunc(run_id, f"{EXPORTS}/{kind}", Path(pyfunc_model.__file__), {WEIGHTS: folder},
                               signature(classifier), input_example(test, classifier), pip_requirements(kind),
                               [Path(ftcore.__file__).parent])


def export_hash(folder: Path) -> str | None:
    """The content hash of an export's files, its manifest aside (what the manifest and the version's tag record);
    None when there is no such folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    return hash_files({name: digest for name, digest in file_hashes(folder).items() if name != MANIFEST})


def fetch_export(name: str, version: str, kind: str, dst: Path) -> Path:
    """The version's `kind` export as the folder `dst` (for `load_export`), downloaded from the run that made it
    unless `dst` already holds it. Either copy is checked against the content hash in the version's tag: a damaged
    one in the artifact store is a one-line error.

    The run is the one the version's `export.<kind>.uri` tag names: a later run that trained the same model gets
    the earlier run's version back (`register_version`'s identity) and logs the exports it makes in its own run."""
    dst = Path(dst)
    uri = f"models:/{name}/{version}"
    tags = versions.version_tags(name, version)
    expected = tags.get(f"export.{kind}.hash")
    remake = f"make it again with `ftflow export {uri} --kind {kind}`"
    if expected is None:
        raise UserError(f"{uri} has no {kind} export; make it with `ftflow export {uri} --kind {kind}`")
    if export_hash(dst) == expected:
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dst.name}.", dir=dst.parent) as tmp:
        run_id = tags[f"export.{kind}.uri"].removeprefix("runs:/").split("/", 1)[0]
        try:
            downloaded = tracking.download_run_artifact(run_id, f"{EXPORTS}/{kind}/artifacts/{WEIGHTS}", Path(tmp))
        except FileNotFoundError as e:
            raise UserError(f"{uri}: its {kind} export cannot be fetched from the artifact store ({e}); "
                            f"{remake}") from None
        if export_hash(downloaded) != expected:
            raise UserError(f"{uri}: its {kind} export in the artifact store is not what was exported (missing, "
                            f"damaged or truncated files); {remake}")
        if dst.exists():
            shutil.rmtree(dst)
        downloaded.rename(dst)
    return dst


def load_export(folder: Path):
    """(model, tokenizer) of an export folder of any kind, ready for CPU inference; any other model folder ftflow
    wrote loads as `load_trained` loads it. int8 weights load quantised (their config names the scheme); an adapter
    export is attached to its base, recovered from the version it came from (fetched from the registry once)."""
    folder = Path(folder)
    path = folder / MANIFEST
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    if manifest.get("kind") in GGUF_KINDS:
        return gguf.read_back(gguf_file(folder))
    if manifest.get("kind") == "onnx":
        return onnx_export.OnnxCausalLM(folder), reload_processing(folder)
    if manifest.get("kind") != "adapter":
        return load_trained(folder)
    version = VersionModel.read(model_folder(pin_reference(manifest["source"], f"{folder}/{MANIFEST}: source")))
    classes = saved_classes(version.folder)
    base = (unmerged_base(version.folder, version.adapter, classes) if version.merged
            else reload_model(version.folder, classes))
    # The adapter export has no config.json: the version it came from says whether the model runs its own code.
    return attach_adapter(base, folder, trainable=False), load_tokenizer(folder, runs_own_code(version.folder))
