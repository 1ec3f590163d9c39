"""Loading models and tokenizers from folders (or hub ids where a hub is reachable): safetensors only, remote code
only when the recipe allows it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ftcore.errors import UserError

T = TypeVar("T")


def _loaded(what: str, name_or_path: str | Path, load: Callable[[], T]) -> T:
    """Turn the many ways a load fails (no such folder, no config, offline hub) into one line for the user."""
    try:
        return load()
    except (OSError, ValueError) as e:
        raise UserError(
            f"model.name_or_path: cannot load the {what} from {str(name_or_path)!r} ({str(e).splitlines()[0]}); "
            f"give a local folder with config.json, tokenizer files and *.safetensors, or a hub id where a hub is "
            f"reachable"
        ) from None


def load_tokenizer(name_or_path: str | Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = _loaded("tokenizer", name_or_path, lambda: AutoTokenizer.from_pretrained(
        str(name_or_path), trust_remote_code=trust_remote_code))
    if tokenizer.pad_token is None:  # causal LMs often ship without one; batching needs it
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(name_or_path: str | Path, trust_remote_code: bool = False):
    from transformers import AutoModelForCausalLM

    return _loaded("model", name_or_path, lambda: AutoModelForCausalLM.from_pretrained(
        str(name_or_path), trust_remote_code=trust_remote_code, use_safetensors=True))


def load_trained(model_path: Path):
    """A model folder written by ftflow (a base, a merged model, or a base with an adapter that cannot be merged),
    with its tokenizer."""
    from ftcore.models.peft_methods import load_exported  # imported here: peft_methods imports this module

    return load_exported(model_path), load_tokenizer(model_path)
