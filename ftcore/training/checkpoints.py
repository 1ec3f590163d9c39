"""Checkpoints that outlive a crashed attempt of the train stage, so the next attempt resumes instead of starting
over.

They live in `<out_dir>.checkpoints/`, beside the stage's output folder: that folder is written atomically only when
training is done, so anything a crashed attempt left must be elsewhere. The Trainer writes each checkpoint into
`.incoming/checkpoint-N` file by file (not atomically); once it is done, `commit` refuses non-finite weights, syncs
the files, writes a marker listing every file with its size and SHA-256 last, and renames the folder to
`checkpoint-N` in one step. A `checkpoint-N` is resumed from only when its marker is there, its files still match it
and every tensor in them loads and is finite (see `problem_with`), so a checkpoint cut short by a kill, a full disk
or a truncated copy, or changed afterwards, is skipped in favour of the one before.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ftcore.hashing import hash_file
from ftcore.tensors import TORCH_SUFFIXES, load_problem, non_finite_weights
from ftcore.training.divergence import NonFinite

log = logging.getLogger(__name__)

MARKER = "COMPLETE.json"
# What `Trainer.train(resume_from_checkpoint=...)` restores besides the weights: optimizer, LR scheduler, RNG
# states (one file per process in a distributed run, rng_state_<rank>.pth), and the trainer state (global step, log
# history, data position).
RESUME_FILES = ("optimizer.pt", "scheduler.pt", "trainer_state.json")
_RNG_STATE = re.compile(r"^rng_state(_\d+)?\.pth$")
_NAME = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int


def checkpoint_root(out_dir: Path) -> Path:
    """The stable checkpoint folder of a stage output folder: the same inputs always find the same checkpoints."""
    out_dir = Path(out_dir)
    return out_dir.with_name(f"{out_dir.name}.checkpoints")


class CheckpointStore:
    """Complete checkpoints under `root`, the newest `keep` of them; the Trainer writes into `incoming`."""

    def __init__(self, root: Path, keep: int):
        self.root, self.keep = Path(root), keep

    @property
    def incoming(self) -> Path:
        return self.root / ".incoming"

    def prepare(self) -> None:
        """An empty `incoming` folder: whatever a killed attempt was writing there is incomplete by definition."""
        shutil.rmtree(self.incoming, ignore_errors=True)
        self.incoming.mkdir(parents=True)

    def commit(self, step: int) -> Checkpoint:
        """Publish the checkpoint the Trainer has just written for `step`, then drop all but the newest `keep`.
        Raises NonFinite, publishing nothing, when its weights hold a NaN or an infinity."""
        staged = self.incoming / f"checkpoint-{step}"
        if (bad := non_finite_weights(staged)) is not None:
            raise NonFinite(f"the checkpoint's weight {bad} is not finite", step)
        files = {p.relative_to(staged).as_posix(): _seal(p) for p in sorted(staged.rglob("*")) if p.is_file()}
        marker = staged / MARKER
        marker.write_text(json.dumps({"step": step, "files": files}, indent=1))
        _fsync(marker)
        final = self.root / f"checkpoint-{step}"
        if final.exists():  # left by an earlier attempt that got this far (skipped as corrupt, or re-reached)
            _delete(final)
        staged.rename(final)
        _fsync(self.root)
        for old in self.all()[self.keep:]:
            _delete(old.path)
        return Checkpoint(final, step)

    def all(self) -> list[Checkpoint]:
        """Every published checkpoint folder, newest first (complete or not: see `latest_complete`)."""
        found = [Checkpoint(p, int(m.group(1))) for p in self.root.glob("checkpoint-*") if (m := _NAME.match(p.name))]
        return sorted(found, key=lambda c: c.step, reverse=True)

    def latest_complete(self) -> Checkpoint | None:
        """The newest checkpoint that passes `problem_with`. Newer ones that do not are logged and removed: training
        repeats their steps and would overwrite them anyway."""
        for checkpoint in self.all():
            problem = problem_with(checkpoint)
            if problem is None:
                return checkpoint
            log.warning("skipping checkpoint %s: %s", checkpoint.path, problem)
            _delete(checkpoint.path)
        return None

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def restore_renamed_weights(trainer) -> None:
    """Make `trainer` restore a checkpoint's weights through `from_pretrained` where the checkpoint names them
    otherwise than the model does.

    transformers 5 renames some families' weights on saving (save_pretrained writes LLaVA's language model as
    `language_model.model.*`, the layout of the checkpoints on the hub, while the model holds
    `model.language_model.*`) and renames them back on loading. The Trainer's resume skips that: it reads the file
    with `load_state_dict(strict=False)`, so every renamed weight silently stays as the run began (transformers issue
    43701) and the resumed run trains a mismatched model. Where the names differ, the checkpoint is loaded as
    `from_pretrained` loads a model (one more copy of the weights in memory meanwhile) and copied in strictly;
    elsewhere (adapters, families saved as they are held) the Trainer's own loader runs."""
    # An instance attribute: every objective's trainer class (SFT, DPO, ...) resumes through this one method.
    own_loader = trainer._load_from_checkpoint

    def load(checkpoint: str, model=None) -> None:
        target = trainer.model if model is None else model
        saved = _saved_weight_names(Path(checkpoint))
        held = set(target.state_dict())
        if saved is None or not hasattr(target, "save_pretrained") or saved <= held:  # tied weights are saved once
            own_loader(checkpoint, model)
            return
        from ftcore.models.load import MODEL_BUILD_LOCK

        with MODEL_BUILD_LOCK:
            restored = type(target).from_pretrained(checkpoint, dtype=target.dtype)
        target.load_state_dict(restored.state_dict(), strict=True)
        log.info("restored the weights of %s through from_pretrained (%d saved under other names)", checkpoint,
                 len(saved - held))

    trainer._load_from_checkpoint = load


def _saved_weight_names(checkpoint: Path) -> set[str] | None:
    """The weight names of a checkpoint of a whole model (model.safetensors, or its shards' index); None for an
    adapter's checkpoint."""
    index = checkpoint / "model.safetensors.index.json"
    if index.is_file():
        return set(json.loads(index.read_text())["weight_map"])
    if not (checkpoint / "model.safetensors").is_file():
        return None
    from safetensors import safe_open

    with safe_open(checkpoint / "model.safetensors", "pt") as weights:
        return set(weights.keys())


def problem_with(checkpoint: Checkpoint) -> str | None:
    """Why `checkpoint` cannot be resumed from, or None when it is complete: the marker is there, every file it
    lists has the recorded size and content hash, the resume files and weights are among them, every tensor file
    loads (torch files weights-only, as resuming loads them) with finite values only, and the trainer state is at
    the checkpoint's step."""
    try:
        files = _recorded_files(checkpoint.path / MARKER)
    except (OSError, ValueError):
        return f"no readable {MARKER} (the checkpoint was not finished)"
    except (KeyError, TypeError, AttributeError):
        return f"{MARKER} records no content hashes (an older ftflow wrote it): nothing proves the files unchanged"
    for name, (size, digest) in files.items():
        if (problem := _file_problem(checkpoint.path / name, size, digest)) is not None:
            return f"{name} {problem}"
    missing = [name for name in RESUME_FILES if name not in files]
    if not any(_RNG_STATE.match(name) for name in files):
        missing.append("rng_state.pth")
    weights = [name for name in files if name.endswith(".safetensors")]
    if missing or not weights:
        return f"{', '.join(missing) or 'the weights (*.safetensors)'} not in the checkpoint"
    for name in [*weights, *(name for name in files if name.endswith(TORCH_SUFFIXES))]:
        if (problem := load_problem(checkpoint.path / name)) is not None:
            return f"{name} {problem}"
    try:
        step = json.loads((checkpoint.path / "trainer_state.json").read_text())["global_step"]
    except (OSError, ValueError, KeyError) as e:
        return f"trainer_state.json is unreadable ({e})"
    if step != checkpoint.step:
        return f"trainer_state.json is at step {step}, not {checkpoint.step}"
    return None


def _recorded_files(marker: Path) -> dict[str, tuple[int, str]]:
    """name -> (size, SHA-256) of every file the marker lists."""
    recorded = json.loads(marker.read_text())["files"]
    return {name: (int(entry["bytes"]), str(entry["sha256"])) for name, entry in recorded.items()}


def _file_problem(path: Path, size: int, digest: str) -> str | None:
    """What is wrong with a listed file: missing, another size (cut short), another content (changed)."""
    if not path.is_file():
        return "is missing"
    if path.stat().st_size != size:
        return f"has {path.stat().st_size} bytes, {size} were written"
    if hash_file(path) != digest:
        return "does not match its content hash (it changed after the checkpoint was written)"
    return None


def _seal(path: Path) -> dict:
    """A file's marker entry, once it is on disk: a power cut, not only a killed process, must not leave a marker
    over lost data."""
    _fsync(path)
    return {"bytes": path.stat().st_size, "sha256": hash_file(path)}


def _delete(folder: Path) -> None:
    # The marker goes first: a deletion cut short leaves a folder that is visibly incomplete.
    (folder / MARKER).unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
