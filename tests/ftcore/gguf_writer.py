"""GGUF files written from model folders, for tests: what a user downloads as "the GGUF of a model", written by
ftflow's own GGUF export writer (ftcore/deploy/gguf.py, which does llama.cpp's converter's work with the `gguf`
package)."""

from __future__ import annotations

from pathlib import Path


def write_gguf(folder: Path, out: Path, quantization: str = "F32") -> Path:
    """`out`, a GGUF file of the model in `folder`, its matrices in `quantization` (F32 or Q8_0)."""
    from ftcore.deploy.gguf import write_gguf as write

    out.parent.mkdir(parents=True, exist_ok=True)
    write(folder, out, quantization.lower(), folder.name)
    return out


def tiny_llama_folder(out: Path, texts: list[str]) -> Path:
    """A Llama model folder small enough to go through GGUF in a second (the model zoo's real 128k-token
    vocabularies take a minute to read back from GGUF metadata): grouped-query attention, bfloat16 weights as real
    releases ship them, and a byte-level BPE tokenizer trained on `texts`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ftcore.models.scratch import train_tokenizer

    tokenizer = train_tokenizer(texts, 300)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         rms_norm_eps=1e-5, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
