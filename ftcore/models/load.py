"""Loading models and tokenizers from folders (or hub ids where a hub is reachable): safetensors only, remote code
only when the recipe allows it."""

from __future__ import annotations

from pathlib import Path

from ftcore.errors import UserError


def load_tokenizer(name_or_path: str | Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:  # causal LMs often ship without one; batching needs it
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(name_or_path: str | Path, trust_remote_code: bool = False):
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(
            str(name_or_path), trust_remote_code=trust_remote_code, use_safetensors=True
        )
    except OSError as e:
        raise UserError(
            f"model.name_or_path: cannot load {name_or_path!r} ({str(e).splitlines()[0]}); give a local folder with "
            f"config.json and *.safetensors, or a hub id when a hub is reachable"
        ) from None


def load_trained(model_path: Path):
    """A model folder written by ftflow (base or merged), with its tokenizer."""
    return load_causal_lm(model_path), load_tokenizer(model_path)
