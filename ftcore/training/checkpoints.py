"""Checkpoints that outlive a crashed attempt of the train stage, so the next attempt resumes instead of starting
over.

They live in `<out_dir>.checkpoints/`, beside the stage's output folder: that folder is written atomically only when
training is done, so anything a crashed attempt left must be elsewhere. The Trainer writes each checkpoint into
`.incoming/checkpoint-N` file by file (not atomically); once it is done, `commit` syncs the files, writes a marker
listing every file and its size last, and renames the folder to `checkpoint-N` in one step. A `checkpoint-N` is
resumed from only when its marker is there and its files still match it (see `problem_with`), so a checkpoint cut
short by a kill, a full disk or a truncated copy is skipped in favour of the one before.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

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
        """Publish the checkpoint the Trainer has just written for `step`, then drop all but the newest `keep`."""
        staged = self.incoming / f"checkpoint-{step}"
        files = {p.relative_to(staged).as_posix(): p.stat().st_size for p in sorted(staged.rglob("*")) if p.is_file()}
        for name in files:
            _fsync(staged / name)  # a power cut, not only a killed process, must not leave a marker over lost data
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


def problem_with(checkpoint: Checkpoint) -> str | None:
    """Why `checkpoint` cannot be resumed from, or None when it is complete: the marker is there, every file it
    lists has the recorded size, the resume files and weights are among them, the safetensors files load and the
    trainer state is at the checkpoint's step."""
    try:
        marker = json.loads((checkpoint.path / MARKER).read_text())
    except (OSError, ValueError):
        return f"no readable {MARKER} (the checkpoint was not finished)"
    files: dict[str, int] = marker.get("files", {})
    for name, size in files.items():
        path = checkpoint.path / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were written"
    missing = [name for name in RESUME_FILES if name not in files]
    if not any(_RNG_STATE.match(name) for name in files):
        missing.append("rng_state.pth")
    weights = [name for name in files if name.endswith(".safetensors")]
    if missing or not weights:
        return f"{', '.join(missing) or 'the weights (*.safetensors)'} not in the checkpoint"
    for name in weights:
        if (error := _safetensors_error(checkpoint.path / name)) is not None:
            return f"{name} does not load ({error})"
    try:
        step = json.loads((checkpoint.path / "trainer_state.json").read_text())["global_step"]
    except (OSError, ValueError, KeyError) as e:
        return f"trainer_state.json is unreadable ({e})"
    if step != checkpoint.step:
        return f"trainer_state.json is at step {step}, not {checkpoint.step}"
    return None


def _safetensors_error(path: Path) -> str | None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open has keys(), not iteration)
                f.get_tensor(key)
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    return None


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
