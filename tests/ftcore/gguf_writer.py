"""GGUF files written from model folders, for tests: what a user downloads as "the GGUF of a model".

`write_gguf` does for a Llama folder what llama.cpp's convert_hf_to_gguf.py does (no llama.cpp code: the `gguf`
package writes the file): the hyperparameters under llama.cpp's key names, the BPE vocabulary and merges of
tokenizer.json (`tokenizer.ggml.model` gpt2, pre-tokenizer llama-bpe), the chat template, and every tensor under
its GGUF name (`gguf.get_tensor_name_map`), with the query and key projections permuted as llama.cpp stores them
(transformers permutes them back when it loads the file). Tensors are written in float32 or quantised to Q8_0.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """convert_hf_to_gguf's LlamaModel.permute: rotary halves interleaved, as llama.cpp's kernels want them."""
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _vocabulary(folder: Path, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens by id, token types, merges) of the folder's tokenizer.json, padded to the model's vocab_size with
    unused tokens, as convert_hf_to_gguf's `get_vocab_base` does."""
    import gguf

    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    by_id = {index: token for token, index in tokenizer["model"]["vocab"].items()}
    types = {index: gguf.TokenType.NORMAL for index in by_id}
    for added in tokenizer["added_tokens"]:
        by_id[added["id"]] = added["content"]
        types[added["id"]] = gguf.TokenType.CONTROL if added["special"] else gguf.TokenType.USER_DEFINED
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(vocab_size)]
    token_types = [int(types.get(i, gguf.TokenType.UNUSED)) for i in range(vocab_size)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]]
    return tokens, token_types, merges


def write_gguf(folder: Path, out: Path, quantization: str = "F32", pre: str = "llama-bpe") -> Path:
    """`out`, a GGUF file of the Llama model in `folder` (config.json, safetensors, tokenizer.json), with its
    matrices in `quantization` (F32 or Q8_0; norms stay float32, as llama.cpp keeps them). `pre` names the
    pre-tokenizer as llama.cpp does (llama-bpe: Llama 3's; gpt-2: GPT-2's, which a byte-level BPE trained with
    `tokenizers` uses)."""
    import gguf
    from safetensors.torch import load_file

    config = json.loads((folder / "config.json").read_text())
    if config["model_type"] != "llama":
        raise ValueError(f"write_gguf writes Llama folders, not {config['model_type']}")
    heads, kv_heads, layers = config["num_attention_heads"], config["num_key_value_heads"], config["num_hidden_layers"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    rope = config.get("rope_parameters") or {"rope_theta": config.get("rope_theta", 10000.0)}

    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(out, "llama")
    writer.add_name(folder.name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(layers)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(rope["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if quantization == "Q8_0" else gguf.LlamaFileType.ALL_F32)

    tokens, token_types, merges = _vocabulary(folder, config["vocab_size"])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(config["bos_token_id"])
    writer.add_eos_token_id(config["eos_token_id"] if isinstance(config["eos_token_id"], int)
                            else config["eos_token_id"][0])
    if config.get("pad_token_id") is not None:
        writer.add_pad_token_id(config["pad_token_id"])
    if (folder / "chat_template.jinja").is_file():
        writer.add_chat_template((folder / "chat_template.jinja").read_text())

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, layers)
    weights = {}
    for path in sorted(folder.glob("*.safetensors")):
        weights.update(load_file(path))
    for hf_name, array in weights.items():
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"no GGUF name for {hf_name}")
        array = array.float().numpy()  # numpy has no bfloat16
        if hf_name.endswith("q_proj.weight"):
            array = _permute(array, heads)
        elif hf_name.endswith("k_proj.weight"):
            array = _permute(array, kv_heads)
        if quantization == "Q8_0" and array.ndim == 2:
            writer.add_tensor(name, gguf.quantize(array, gguf.GGMLQuantizationType.Q8_0),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
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
