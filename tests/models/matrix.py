"""One cell of the support matrix: a family's folder (tests/models/zoo.py), a method and an objective, run through
ftflow's own stages as a recipe with `model.source: pretrained` runs them: validate, collect, clean, init, a few
train steps, export, reload, then generate or classify.

A cell passes when the loss falls, every trainable tensor changed, every tensor the method leaves frozen is
bit-identical in the exported model, and the reloaded export answers. A cell the support rules refuse
(ftcore/models/support.py) must be refused by the recipe check, in one line; the matrix records the reason.

`make compat` runs every cell (tests/models/compat.py) and writes docs/models.md; tests/models/test_matrix.py runs a
slice of it in `make test`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.ftcore.objective_fixtures import ABBREVIATIONS, HAM, SPAM, write_jsonl
from tests.models.zoo import BY_NAME, Family, folder

# Small options for each method, so that a cell trains in seconds; everything else is the method's default.
METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    "full": {}, "lora": {"r": 4}, "qlora": {"r": 4}, "dora": {"r": 4}, "ia3": {}, "adapter": {"bottleneck_size": 8},
    "prefix": {"num_virtual_tokens": 4}, "prompt": {"num_virtual_tokens": 4}, "p_tuning": {"num_virtual_tokens": 4},
    "loha": {"r": 4}, "lokr": {"r": 4},
}
METHODS = tuple(METHOD_OPTIONS)
# Learning rates that move every method within the cell's steps on a random tiny model.
LEARNING_RATE = {"full": 1e-3, "ia3": 5e-2, "prompt": 3e-1, "p_tuning": 1e-2, "prefix": 3e-2}
DEFAULT_LEARNING_RATE = 1e-2
# Training steps per objective. A classifier on a random encoder starts at chance (loss ln 2) and its dropout makes
# single steps noisy, so it gets more steps to show the trend.
STEPS = {"sft": 8, "dpo": 8, "classification": 24}
# A classifier memorises its one batch within a few steps, and at a constant rate Adam's steps on the near-zero
# gradients that follow throw it off again (GPT-2 with LoRA: loss 0.001 at step 8, 1.8 at step 10): its rate decays
# to zero over the steps instead.
SCHEDULER = {"sft": "constant", "dpo": "constant", "classification": "linear"}
# One batch of ROWS examples: every step trains on the same rows, so the loss of the first and last steps compare
# like with like.
ROWS = 4


OBJECTIVES = ("sft", "dpo", "classification")


def objectives_of(family: Family) -> tuple[str, ...]:
    """What the matrix tries on a family: language models train sft and dpo, and every family classifies."""
    return ("classification",) if family.kind == "encoder" or family.head else ("sft", "dpo", "classification")


class Refused(Exception):
    """The recipe check refused the cell (the one line `ftflow validate` prints)."""


@dataclass
class Cell:
    family: str
    method: str
    objective: str
    status: str = "not run"  # passed, refused, failed
    reason: str = ""  # why refused or failed
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"family": self.family, "method": self.method, "objective": self.objective, "status": self.status,
                "reason": self.reason, "seconds": round(self.seconds, 1), **self.details}


def chats() -> list[dict]:
    """Short two-turn chats with a system prompt: the loss is on the assistant turns."""
    return [{"messages": [{"role": "system", "content": "Expand the abbreviation."},
                          {"role": "user", "content": f"What does {a} mean?"},
                          {"role": "assistant", "content": m}]} for a, m in list(ABBREVIATIONS.items())[:ROWS]]


def pairs() -> list[dict]:
    return [{"prompt": f"What does {a} mean?", "chosen": m, "rejected": "I do not know."}
            for a, m in list(ABBREVIATIONS.items())[:ROWS]]


def labelled() -> list[dict]:
    half = ROWS // 2
    return ([{"label": "spam", "text": SPAM[n % len(SPAM)].format(n=n)} for n in range(half)]
            + [{"label": "ham", "text": HAM[n % len(HAM)].format(n=n)} for n in range(half)])


def recipe(family: Family, method: str, objective: str, root: Path) -> Path:
    """The cell's recipe, with its data written beside it."""
    if objective == "sft":
        data = {"sources": [{"type": "jsonl", "path": str(write_jsonl(root / "chats.jsonl", chats()))}],
                "format": "messages"}
    elif objective == "dpo":
        data = {"sources": [{"type": "jsonl", "path": str(write_jsonl(root / "pairs.jsonl", pairs()))}],
                "format": "preference"}
    else:
        data = {"sources": [{"type": "jsonl", "path": str(write_jsonl(root / "sms.jsonl", labelled()))}],
                "format": "text_label"}
    data["split"] = {"validation": 0.0, "test": 0.0, "seed": 0}
    body = {
        "name": f"compat-{family.name}-{method}-{objective}",
        "objective": objective,
        "data": data,
        "clean": {"steps": []},
        "model": {"source": "pretrained", "name_or_path": str(folder(family.name))},
        "method": {"name": method, **METHOD_OPTIONS[method]},
        "train": {"max_steps": STEPS[objective], "batch_size": ROWS, "learning_rate": LEARNING_RATE.get(method,
                                                                                           DEFAULT_LEARNING_RATE),
                  "lr_scheduler": SCHEDULER[objective], "logging_steps": 1, "max_length": 64, "save_steps": 1000,
                  "seed": 0},
    }
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def run_cell(family_name: str, method: str, objective: str, root: Path) -> Cell:
    """Run one cell in `root` (a fresh folder); never raises for a cell's own failure: it is recorded."""
    from ftcore.errors import UserError

    cell = Cell(family_name, method, objective)
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        _run(cell, BY_NAME[family_name], root)
    except Refused as e:
        cell.status, cell.reason = "refused", str(e)
    except UserError as e:  # refused, but only once it ran: `ftflow validate` would have passed it
        cell.status, cell.reason = "failed", f"refused at run time, not by validate: {e}"
    except Exception as e:
        cell.status, cell.reason = "failed", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    cell.seconds = time.perf_counter() - started
    return cell


def _run(cell: Cell, family: Family, root: Path) -> None:
    from ftcore.data.clean import clean_balance_stage
    from ftcore.data.collect import CollectJob, collect_stage
    from ftcore.errors import UserError
    from ftcore.jobs import clean_job
    from ftcore.models.init import InitJob, init_stage
    from ftcore.models.support import check_recipe_model
    from ftcore.recipe import load_recipe
    from ftcore.training.jobs import TrainJob
    from ftcore.training.train import train_stage

    loaded = load_recipe(recipe(family, cell.method, cell.objective, root))
    try:
        # What `ftflow validate` runs: a refused cell stops here with its reason.
        check_recipe_model(loaded.model, loaded.method, loaded.spec)
    except UserError as e:
        raise Refused(str(e)) from None
    collected = collect_stage(CollectJob(data=loaded.data, sources={}), root / "collected")
    dataset = clean_balance_stage(clean_job(loaded, collected), root / "clean")
    base = init_stage(InitJob(model=loaded.model, method=loaded.method, dataset=dataset, objective=loaded.spec),
                      root / "init")
    trained = train_stage(TrainJob(base=base, dataset=dataset, train=loaded.train, objective=loaded.spec),
                          root / "train")
    cell.details |= losses(trained.history_path)
    cell.details |= weight_changes(base, trained.model_path, cell.method)
    cell.details |= answer(trained.model_path, cell.objective)
    problems = [message for ok, message in (
        (cell.details["last_loss"] < cell.details["first_loss"], "the loss did not fall"),
        (cell.details["trainable_changed"] == cell.details["trainable_tensors"] > 0,
         f"{cell.details['trainable_tensors'] - cell.details['trainable_changed']} of "
         f"{cell.details['trainable_tensors']} trainable tensors did not change"),
        (not cell.details["frozen_changed"], f"frozen tensors changed: {cell.details['frozen_changed'][:3]}"),
    ) if not ok]
    cell.status, cell.reason = ("failed", "; ".join(problems)) if problems else ("passed", "")


def losses(history_path: Path) -> dict[str, float]:
    """The mean logged training loss of the first and of the last quarter of the steps (at least two each: one
    step is noisy)."""
    history = json.loads(history_path.read_text())
    values = [entry["loss"] for entry in history if "loss" in entry]
    n = max(2, len(values) // 4)
    return {"first_loss": sum(values[:n]) / n, "last_loss": sum(values[-n:]) / n}


def weight_changes(base, trained_dir: Path, method: str) -> dict[str, Any]:
    """Which tensors training changed: the adapter's against the init stage's (or, for full fine-tuning, the
    model's against the base), and whether the exported model kept every tensor the method leaves frozen."""
    from safetensors.torch import load_file

    from ftcore.models.load import saved_classes
    from ftcore.models.peft_methods import EXPORTED_ADAPTER, TRAINED_ADAPTER

    base_weights = _model_weights(Path(base.base_path), base.classes or None)
    exported = _model_weights(trained_dir, saved_classes(trained_dir))
    if method == "full":
        trainable = {name: (base_weights[name], exported[name]) for name in base_weights if name in exported}
        frozen: dict = {}
    else:
        initial = load_file(str(Path(base.adapter_path) / "adapter_model.safetensors")) if base.adapter_path else {}
        adapter_dir = next(d for d in (trained_dir / TRAINED_ADAPTER, trained_dir / EXPORTED_ADAPTER) if d.is_dir())
        final = load_file(str(adapter_dir / "adapter_model.safetensors"))
        trainable = {name: (initial.get(name), final[name]) for name in final}
        touched = _touched_by_adapter(final, base_weights)
        frozen = {name: (base_weights[name], exported[name]) for name in base_weights
                  if name in exported and name not in touched}
    changed = [name for name, (before, after) in trainable.items() if before is None or not _same(before, after)]
    frozen_changed = [name for name, (before, after) in frozen.items() if not _same(before, after)]
    return {"trainable_tensors": len(trainable), "trainable_changed": len(changed), "frozen_changed": frozen_changed,
            "frozen_tensors": len(frozen)}


def _model_weights(path: Path, classes: list[str] | None) -> dict:
    """The folder's weights as the loaded model names them, which the adapter's names follow: a checkpoint may store
    them otherwise (Mixtral's experts are saved one by one as `block_sparse_moe.experts.N.w1` and load fused as
    `mlp.experts.gate_up_proj`). A classifier's new head is seeded, so it loads the same twice."""
    from ftcore.models.load import load_model

    return {name: tensor.detach().clone() for name, tensor in load_model(path, classes=classes).state_dict().items()}


def _touched_by_adapter(adapter: dict, base_weights: dict) -> set[str]:
    """The base's tensors an adapter's tensors modify when merged: the weight (and bias) of each adapted layer, and
    the tensors PEFT trains in full (modules_to_save: a classifier's head)."""
    layers = set()
    for name in adapter:
        module = name.removeprefix("base_model.model.")
        for marker in (".lora_", ".ia3_", ".hada_", ".lokr_", ".bottleneck_", ".modules_to_save"):
            if marker in module:
                layers.add(module.split(marker)[0])
        if module.endswith((".weight", ".bias")) and module in base_weights:  # a tensor saved whole (a head)
            layers.add(module.rsplit(".", 1)[0])
    return {name for name in base_weights if name.rsplit(".", 1)[0] in layers or
            any(name.startswith(layer + ".") for layer in layers)}


def _same(before, after) -> bool:
    """Bit-identical, up to the exact upcast a bf16 or fp16 folder gets when it loads on a CPU."""
    return before.shape == after.shape and bool((before.to(after.dtype) == after).all())


def answer(trained_dir: Path, objective: str) -> dict[str, Any]:
    """Reload the exported folder as a user would and ask it: generate a few tokens, or classify."""
    import torch

    from ftcore.models.load import load_trained

    model, tokenizer = load_trained(trained_dir)
    model.eval()
    with torch.no_grad():
        if objective == "classification":
            inputs = tokenizer(["WIN a free prize now, call 5"], return_tensors="pt")
            logits = model(**inputs).logits
            return {"answer": model.config.id2label[int(logits.argmax(-1))]}
        inputs = tokenizer(["What does BP mean?"], return_tensors="pt", add_special_tokens=False)
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        return {"answer": tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)}
