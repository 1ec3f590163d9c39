"""Measured peak training memory, to calibrate ACTIVATION_FACTOR and to check the estimate against (tests).

`measure_peak(probe)` trains a scratch Llama for a few steps with a plain PyTorch loop (AdamW, one fixed batch of
random token ids) in a fresh Python process, and returns how far its peak memory rose above a baseline taken after
the imports and a warm-up with a tiny model (lazy imports, thread pools and kernel caches belong to the process,
not to the model). A classifier probe trains the model init builds for a classification objective instead, on one
random label per sequence: the scratch Llama with a classification head, or a BERT encoder loaded from a folder of
random weights as init loads a pretrained one (`load_model(folder, classes)`). A vision probe (`VisionProbe`) trains
a vision-language recipe's scratch model, built as init builds it, with its method and train.vision, on one batch of
the recipe's longest rows with their real images, through the train stage's collator. Two measures of the peak:
- `maxrss_bytes`: the rise of `ru_maxrss`, the peak resident set. It also counts the file-backed pages of the
  libraries, which the kernel may reclaim when another process needs memory: on the shared development machine one
  run read 88 MiB for a peak every other run measured at 134 MiB, most likely for that reason.
- `peak_bytes`: the rise of the anonymous resident memory (resident - file-backed, /proc/self/statm), sampled
  every millisecond. Tensors are anonymous memory and there is no swap to evict them, so this is what the
  tensors hold however busy the machine; it agrees with `maxrss_bytes` on a quiet one (docs/planning.md).

The child runs with `MALLOC_MMAP_THRESHOLD_` pinned to glibc's initial 128 KiB. By default glibc raises that
threshold as large blocks are freed, after which freed tensor memory stays in the heap: resident memory then creeps
up step after step and stops measuring the tensors (docs/planning.md has the figures). Pinned, every tensor above
128 KiB gets its own mapping and goes back to the system when freed, so the peak is that of live tensors.

    python -m ftcore.planning.measure                 # measure the calibration probes, fit ACTIVATION_FACTOR
    python -m ftcore.planning.measure --test-probes   # the test's probes, with and without each precaution
    python -m ftcore.planning.measure --options       # ... with gradient checkpointing, bf16, as a mixtral
    python -m ftcore.planning.measure --classifiers   # the test's classifier probes (a Llama and a BERT)
    python -m ftcore.planning.measure --vision RECIPE...  # vision-language recipes: full, with the tower, LoRA
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ftcore.models.config import FullMethod, LoraMethod, ModelConfig, ScratchModelConfig
from ftcore.planning.estimate import ACTIVATION_FACTOR, Memory, Setup, activation_bytes, training_memory
from ftcore.planning.shape import method_trainable, model_shape

if TYPE_CHECKING:
    import pandas as pd

    from ftcore.planning.plan import Plan
    from ftcore.recipe import Recipe

GLIBC_INITIAL_MMAP_THRESHOLD = 128 * 1024


@dataclass(frozen=True)
class Probe:
    """A training configuration to measure: a model (a scratch Llama, or a BERT encoder), a method, a fixed batch."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    vocab_size: int
    batch_size: int
    seq_len: int
    method: Literal["full", "lora"]
    lora_r: int = 8
    steps: int = 2  # step 1 already holds the optimizer states; later steps measured the same peak
    gradient_checkpointing: bool = False
    mixed_precision: Literal["no", "bf16"] = "no"  # bf16: autocast, as the trainer's bf16=True
    # mixtral: 4 experts, 2 per token (the scratch defaults); bert: a pretrained encoder's folder (a classifier only,
    # with BertConfig's defaults, its dropout of 0.1 included)
    architecture: Literal["llama", "mixtral", "bert"] = "llama"
    classes: int = 0  # a sequence classifier with this many outputs, one label per sequence; 0: a causal LM

    def model_config(self) -> ModelConfig:
        if self.architecture == "bert":
            return ModelConfig(source="pretrained", name_or_path=str(encoder_folder(self)))
        return ModelConfig(source="scratch", scratch=ScratchModelConfig(
            architecture=self.architecture, vocab_size=self.vocab_size, hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size, num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads, max_position_embeddings=max(256, self.seq_len)))

    def class_names(self) -> list[str] | None:
        """The classifier's classes (what init reads from the train split), None for a causal LM."""
        return [f"class {i}" for i in range(self.classes)] if self.classes else None

    def method_config(self) -> FullMethod | LoraMethod:
        """The method as a recipe's `method` section: the pipeline's apply_method wraps the model with it."""
        return FullMethod() if self.method == "full" else LoraMethod(r=self.lora_r)

    def warm_up(self) -> Probe:
        """A tiny model of the same kind (an encoder warms up an encoder's kernels, a classifier a classifier's)."""
        architecture = "bert" if self.architecture == "bert" else "llama"
        return Probe(16, 32, 1, 2, 64, 1, 8, self.method, architecture=architecture, classes=self.classes)


def encoder_folder(probe: Probe) -> Path:
    """A folder of random BERT weights of the probe's shape, saved as a masked LM as checkpoints are (written once,
    under the temporary directory, whole or not at all): init loads it as a classifier, with a new pooler and
    head."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    from ftcore.fs import atomic_dir

    folder = Path(tempfile.gettempdir()) / "ftflow-probes" / (
        f"bert-h{probe.hidden_size}-i{probe.intermediate_size}-l{probe.num_layers}-a{probe.num_heads}-"
        f"v{probe.vocab_size}")
    if not folder.is_dir():
        torch.manual_seed(0)
        config = BertConfig(vocab_size=probe.vocab_size, hidden_size=probe.hidden_size,
                            intermediate_size=probe.intermediate_size, num_hidden_layers=probe.num_layers,
                            num_attention_heads=probe.num_heads, max_position_embeddings=max(512, probe.seq_len))
        with atomic_dir(folder) as tmp:
            BertForMaskedLM(config).save_pretrained(tmp, safe_serialization=True)
    return folder


@dataclass(frozen=True)
class VisionProbe:
    """A vision-language recipe's training step: the scratch model init builds for the recipe (its tokenizer trained
    on the rows), wrapped by its method on the parts train.vision trains (full fine-tuning freezing the others),
    `steps` steps of AdamW on one batch of its `train.batch_size` longest rows, images and all, through the train
    stage's collator. The rows are planning's sample of the recipe's sources (ftcore/planning/images.py)."""

    recipe: str  # the recipe file
    overrides: tuple[str, ...] = ()  # `--set` values
    steps: int = 2

    def load(self) -> Recipe:
        from ftcore.recipe import load_recipe

        return load_recipe(self.recipe, list(self.overrides))


@dataclass(frozen=True)
class Measured:
    peak_bytes: float  # anonymous memory, sampled (see the module docstring)
    maxrss_bytes: float
    total_params: int  # a vision probe's: its base model's, before the method wraps it
    trainable_params: int
    seconds: float


def estimate(probe: Probe, factor: float | None = None) -> Memory:
    """The planner's estimate for a probe (with another activation factor when calibrating)."""
    cfg, classes = probe.model_config(), probe.class_names()
    shape = model_shape(cfg, classes)
    setup = Setup(probe.batch_size, probe.seq_len, shape.bytes_per_param, probe.gradient_checkpointing,
                  autocast=probe.mixed_precision != "no")
    trainable = method_trainable(cfg, probe.method_config(), classes)[0]
    memory = training_memory("full" if probe.method == "full" else "adapter", shape, trainable, setup)
    return memory if factor is None else replace(memory, activations=activation_bytes(shape, setup, factor))


def probe_rows(recipe: Recipe, store: Path) -> pd.DataFrame:
    """A vision probe's rows: planning's sample of the recipe's sources, images written into `store`."""
    from ftcore.planning.data import read_sources
    from ftcore.planning.images import source_rows

    return source_rows(recipe, read_sources(recipe)[0], store)


def vision_plan(probe: VisionProbe) -> Plan:
    """The plan of a vision probe's recipe, its data counted on the probe's rows as on a train split of them."""
    from ftcore.planning.data import image_rows_stats
    from ftcore.planning.plan import make_plan

    recipe = probe.load()
    with tempfile.TemporaryDirectory(prefix="ftflow-probe-") as tmp:
        rows = probe_rows(recipe, Path(tmp))
        data = image_rows_stats(recipe, rows, rows, "the probe's rows")
    return make_plan(recipe, Path(probe.recipe), data=data)


def measure_peak(probe: Probe | VisionProbe, pin_malloc: bool = True, warm_up: bool = True) -> Measured:
    """`pin_malloc` and `warm_up` off show what each precaution removes (`--test-probes`)."""
    env = dict(os.environ)
    if pin_malloc:
        env["MALLOC_MMAP_THRESHOLD_"] = str(GLIBC_INITIAL_MMAP_THRESHOLD)
    child = json.dumps({"probe": asdict(probe), "vision": isinstance(probe, VisionProbe), "warm_up": warm_up})
    done = subprocess.run([sys.executable, "-m", "ftcore.planning.measure", "--child", child],
                          capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"memory probe failed: {done.stderr[-2000:]}")
    return Measured(**json.loads(done.stdout.strip().splitlines()[-1]))


def _child(probe: Probe, warm_up: bool) -> dict:
    import resource
    import time

    import torch

    from ftcore.models.peft_methods import apply_method
    from ftcore.planning.shape import count_params

    def train(p: Probe, steps: int) -> tuple[int, int]:
        model = apply_method(_model(p), p.method_config())
        if p.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        optimizer = torch.optim.AdamW([w for w in model.parameters() if w.requires_grad], lr=1e-3)
        ids = torch.randint(0, p.vocab_size, (p.batch_size, p.seq_len))
        # A causal LM learns the next tokens, a classifier one class per sequence
        labels = torch.randint(0, p.classes, (p.batch_size,)) if p.classes else ids
        for _ in range(steps):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=p.mixed_precision == "bf16"):
                loss = model(input_ids=ids, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return count_params(model)

    def maxrss() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB

    if warm_up:  # see the module docstring
        train(probe.warm_up(), steps=1)
    rss_baseline, started = maxrss(), time.perf_counter()
    torch.manual_seed(0)
    with AnonymousPeak() as anonymous:
        trainable, total = train(probe, probe.steps)
    return {"peak_bytes": anonymous.peak - anonymous.baseline, "maxrss_bytes": maxrss() - rss_baseline,
            "total_params": total, "trainable_params": trainable, "seconds": time.perf_counter() - started}


def _vision_child(probe: VisionProbe, warm_up: bool) -> dict:
    import resource
    import time

    import torch

    from ftcore.columns import IMAGES_COLUMN
    from ftcore.models.init import corpus
    from ftcore.models.peft_methods import apply_method
    from ftcore.models.scratch import build_vision_language, train_tokenizer
    from ftcore.models.vision import freeze_parts
    from ftcore.planning.images import collator_row, measure_rows, vision_processor
    from ftcore.planning.shape import count_params
    from ftcore.training.vision import ImageCollator

    recipe = probe.load()
    cfg, method, vision, max_length = recipe.model.scratch, recipe.method, recipe.train.vision, recipe.train.max_length

    def train(scratch: ScratchModelConfig, rows: list[dict], steps: int) -> tuple[int, int]:
        model = build_vision_language(scratch, tokenizer)[0]
        total = count_params(model)[1]
        model = apply_method(model, method, tokenizer, vision)
        if isinstance(method, FullMethod):  # as the train stage does
            freeze_parts(model, vision)
        optimizer = torch.optim.AdamW([w for w in model.parameters() if w.requires_grad], lr=1e-3)
        batch = ImageCollator(processor, max_length)(rows)
        for _ in range(steps):
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return count_params(model)[0], total

    def maxrss() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB

    with tempfile.TemporaryDirectory(prefix="ftflow-probe-") as tmp:
        rows = probe_rows(recipe, Path(tmp))
        tokenizer = train_tokenizer(corpus(rows), cfg.vocab_size, cfg)  # as init trains it on the split
        processor = vision_processor(recipe.model, tokenizer)
        measured = measure_rows(rows, processor, max_length)
        # The longest rows, as the plan counts a batch (every row at the longest length and the most tiles)
        longest = sorted(range(len(rows)), key=lambda i: (measured[i].tokens, measured[i].tiles), reverse=True)
        batch = [collator_row(rows["messages"][i], rows[IMAGES_COLUMN][i]) for i in longest[:recipe.train.batch_size]]
        if warm_up:  # a tiny model of the same architecture, images and method (see the module docstring)
            tiny = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
            train(cfg.model_copy(update={**tiny, "vision": cfg.vision.model_copy(update=tiny)}), batch[:1], 1)
        rss_baseline, started = maxrss(), time.perf_counter()
        torch.manual_seed(0)
        with AnonymousPeak() as anonymous:
            trainable, total = train(cfg, batch, probe.steps)
    return {"peak_bytes": anonymous.peak - anonymous.baseline, "maxrss_bytes": maxrss() - rss_baseline,
            "total_params": total, "trainable_params": trainable, "seconds": time.perf_counter() - started}


def _model(probe: Probe):
    """The model init builds: from config for a scratch base, from its folder for a pretrained one."""
    from ftcore.models.load import load_model
    from ftcore.models.scratch import build_model
    from ftcore.planning.shape import VocabOnly

    cfg = probe.model_config()
    if cfg.source == "scratch":
        return build_model(cfg.scratch, VocabOnly(probe.vocab_size), probe.class_names())
    model = load_model(cfg.name_or_path, classes=probe.class_names())
    # Safetensors weights load memory-mapped from their file: file-backed pages, which the anonymous measure leaves
    # out until the optimizer writes them (a frozen base's never). Copied, they count as a scratch model's do.
    for weight in model.parameters():
        weight.data = weight.data.clone()
    return model


class AnonymousPeak:
    """The highest anonymous resident memory of this process while the block runs, sampled every millisecond."""

    def __init__(self):
        import threading

        self.baseline = self.peak = anonymous_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, anonymous_bytes())

    def __enter__(self) -> AnonymousPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, anonymous_bytes())


def anonymous_bytes() -> int:
    """Resident minus file-backed (and shared) pages: the process's own memory (Linux /proc/self/statm)."""
    fields = Path("/proc/self/statm").read_text().split()
    return (int(fields[1]) - int(fields[2])) * os.sysconf("SC_PAGE_SIZE")


# Calibration probes: shapes, batches and lengths unlike each other and unlike TEST_PROBES, so that the fitted
# factor is checked on a configuration it was not fitted to.
CALIBRATION_PROBES = [
    Probe(192, 512, 6, 4, 2048, batch_size=8, seq_len=64, method=m) for m in ("full", "lora")
] + [
    Probe(384, 1024, 2, 6, 8192, batch_size=2, seq_len=256, method=m) for m in ("full", "lora")
] + [
    Probe(128, 256, 4, 4, 512, batch_size=8, seq_len=128, method=m) for m in ("full", "lora")
]
TEST_PROBES = [Probe(256, 688, 4, 4, 4096, batch_size=4, seq_len=128, method=m) for m in ("full", "lora")]
# The classifiers init builds for objective classification, at the causal test probes' size: on a scratch base the
# Llama with a 2-class head, on a pretrained encoder (BERT, 4 x hidden in its MLP) the encoder with a new one.
TEST_CLASSIFIER_PROBES = [replace(probe, classes=2) for probe in TEST_PROBES] + [
    Probe(256, 1024, 4, 4, 4096, batch_size=4, seq_len=128, method=m, architecture="bert", classes=2)
    for m in ("full", "lora")
]


def fit_factor(probes: list[Probe], measured: list[Measured]) -> float:
    """Least squares on relative error: the factor that makes estimate / measured closest to 1 over the probes.
    The estimate is linear in the factor where activations dominate (all calibration probes): peak = rest + f x a."""
    num = den = 0.0
    for probe, m in zip(probes, measured, strict=True):
        at_one, at_two = estimate(probe, 1.0).peak, estimate(probe, 2.0).peak
        a = at_two - at_one  # the factor's share per unit
        rest = at_one - a
        num += a * (m.peak_bytes - rest) / m.peak_bytes**2
        den += a * a / m.peak_bytes**2
    return num / den


def _describe(probe: Probe, estimated: float, measured: Measured, note: str = "") -> str:
    model = f"{probe.architecture} classifier ({probe.classes} classes) " if probe.classes else ""
    return (f"  {model}{probe.method:4s} h={probe.hidden_size} i={probe.intermediate_size} L={probe.num_layers} "
            f"V={probe.vocab_size} b={probe.batch_size} s={probe.seq_len}{note}: estimated {estimated / 2**20:.1f} "
            f"MiB, measured {measured.peak_bytes / 2**20:.1f} MiB "
            f"({(estimated - measured.peak_bytes) / measured.peak_bytes:+.1%}; ru_maxrss "
            f"{measured.maxrss_bytes / 2**20:.1f} MiB; {measured.seconds:.1f} s)")


def _calibrate() -> None:
    measured = [measure_peak(probe) for probe in CALIBRATION_PROBES]
    factor = fit_factor(CALIBRATION_PROBES, measured)
    print(f"fitted ACTIVATION_FACTOR = {factor:.3f} (in use: {ACTIVATION_FACTOR})")
    for probe, m in zip(CALIBRATION_PROBES, measured, strict=True):
        print(_describe(probe, estimate(probe, factor).peak, m))


def _check_test_probes() -> None:
    """The test's probes as the test measures them, then without each precaution."""
    for probe in TEST_PROBES:
        est = estimate(probe).peak
        print(_describe(probe, est, measure_peak(probe)))
        print(_describe(probe, est, measure_peak(probe, warm_up=False), " [no warm-up]"))
        for steps in (2, 5):
            longer = replace(probe, steps=steps)
            print(_describe(longer, est, measure_peak(longer, pin_malloc=False), f" [glibc default, {steps} steps]"))


def _check_options() -> None:
    """The test's probes with the train options that change activations, and as a mixture of experts (estimated,
    not calibrated on them)."""
    for probe in TEST_PROBES:
        for option in ({"gradient_checkpointing": True}, {"mixed_precision": "bf16"}, {"architecture": "mixtral"}):
            varied = replace(probe, **option)
            print(_describe(varied, estimate(varied).peak, measure_peak(varied), f" {option}"))


def _check_classifiers() -> None:
    for probe in TEST_CLASSIFIER_PROBES:
        print(_describe(probe, estimate(probe).peak, measure_peak(probe)))


# What a vision-language recipe is measured with (`--vision`): its own method, the same with the vision tower
# trained, and LoRA (an adapter on the language model, the projector trained whole).
VISION_VARIANTS = ((), ("train.vision.vision_tower=true",), ("method={name: lora, r: 8}",))


def describe_vision(probe: VisionProbe, plan: Plan, measured: Measured) -> str:
    """A vision probe's estimate against its measured peak, and the counts they rest on, in one line."""
    mine, images = plan.estimates[plan.recipe_method], plan.data.images
    estimated = mine.memory.peak
    return (f"  {probe.recipe} {' '.join(probe.overrides) or '(as written)'}: batch {plan.data.seq_len} tokens x "
            f"{probe.load().train.batch_size}, at most {images.tiles_per_row_max} tower inputs a row; parameters "
            f"{plan.model.total_params:,} (measured {measured.total_params:,}), trainable {mine.trainable:,} "
            f"(measured {measured.trainable_params:,}); estimated {estimated / 2**20:.1f} MiB (activations "
            f"{mine.memory.activations / 2**20:.1f}), measured {measured.peak_bytes / 2**20:.1f} MiB "
            f"({(estimated - measured.peak_bytes) / measured.peak_bytes:+.1%}; ru_maxrss "
            f"{measured.maxrss_bytes / 2**20:.1f} MiB; {measured.seconds:.1f} s)")


def _check_vision(recipes: list[str]) -> None:
    for recipe in recipes:
        for overrides in VISION_VARIANTS:
            probe = VisionProbe(recipe, overrides)
            print(describe_vision(probe, vision_plan(probe), measure_peak(probe)))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        spec = json.loads(sys.argv[2])
        if spec["vision"]:
            print(json.dumps(_vision_child(VisionProbe(**{**spec["probe"], "overrides": tuple(
                spec["probe"]["overrides"])}), spec["warm_up"])))
        else:
            print(json.dumps(_child(Probe(**spec["probe"]), spec["warm_up"])))
    elif sys.argv[1:2] == ["--test-probes"]:
        _check_test_probes()
    elif sys.argv[1:2] == ["--options"]:
        _check_options()
    elif sys.argv[1:2] == ["--classifiers"]:
        _check_classifiers()
    elif sys.argv[1:2] == ["--vision"]:
        _check_vision(sys.argv[2:])
    else:
        _calibrate()
