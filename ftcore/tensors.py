"""Reading tensor files to check them: safetensors, and torch's pickles only through its weights-only loader.

A torch file is a pickle, which can run any code when loaded without `weights_only=True`; torch's own refusal of a
damaged file advises loading it that way, so that advice is never passed on (`load_problem`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

from ftcore.errors import first_line

# The torch files a Trainer checkpoint holds and loads on resume (optimizer, scheduler, RNG states, grad scaler);
# training_args.bin is a pickled object that nothing loads.
TORCH_SUFFIXES = (".pt", ".pth")


def safetensors_tensors(path: Path) -> Iterator[tuple[str, object]]:
    """(name, tensor) for every tensor of one safetensors file, one at a time."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open has keys(), not iteration)
            yield key, f.get_tensor(key)


def first_non_finite(tensors: Iterable[tuple[str, object]]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or an infinity, or None."""
    import torch

    for name, tensor in tensors:
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            return name
    return None


def load_problem(path: Path) -> str | None:
    """Why the tensor file at `path` (safetensors, or a torch file) cannot be used: it does not load, or a tensor in
    it is not finite; None when it is fine."""
    try:
        bad = first_non_finite(_torch_tensors(path) if path.suffix in TORCH_SUFFIXES else safetensors_tensors(path))
    # Whatever a damaged file makes a loader raise (zip, pickle, header, I/O errors) means the same: unusable.
    except Exception as e:
        return f"does not load ({_safe_reason(e)})"
    return None if bad is None else f"holds non-finite values (NaN or infinity) in {bad}"


def non_finite_weights(folder: Path) -> str | None:
    """`<file>: <tensor>` for the first non-finite tensor in the safetensors files under `folder`, or None."""
    for path in sorted(Path(folder).rglob("*.safetensors")):
        if (bad := first_non_finite(safetensors_tensors(path))) is not None:
            return f"{path.relative_to(folder).as_posix()}: {bad}"
    return None


def _torch_tensors(path: Path) -> Iterator[tuple[str, object]]:
    """Every tensor in a torch file, loaded as the Trainer loads it on resume: weights-only, numpy's RNG state
    allowed."""
    import torch
    from transformers.trainer_pt_utils import safe_globals

    # A damaged file also makes the unpickler warn (about its pickle protocol): the reason returned says it instead.
    with safe_globals(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    yield from _walk(loaded, path.name)


def _walk(value, name: str) -> Iterator[tuple[str, object]]:
    """The leaves of nested dicts, lists and tuples (an optimizer's state), each named by its path."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, f"{name}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _walk(item, f"{name}.{index}")
    else:
        yield name, value


def _safe_reason(error: Exception) -> str:
    # torch's weights-only refusal advises retrying with weights_only=False, which would run whatever code the file
    # holds: say what happened instead.
    if "weights_only" in str(error):
        return "not a file of tensors: the weights-only loader refused it"
    return first_line(error).split(". ")[0]  # torch's later sentences are general advice
