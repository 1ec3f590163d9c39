"""GGUF files for llama.cpp and Ollama, written from a merged model folder with the `gguf` package.

llama.cpp's own converter (convert_hf_to_gguf.py) is not a package, so this does its work for the families listed in
FAMILIES: the hyperparameters under llama.cpp's key names, every tensor under its GGUF name (`gguf`'s own
`TensorNameMap`, so the names are llama.cpp's, not a copy of them), the query and key projections of LLaMA-style
models permuted into the rotary layout llama.cpp's kernels expect (transformers' GGUF loader permutes them back), and
the tokenizer: a byte-level BPE (`tokenizer.ggml.model` gpt2, with the pre-tokenizer named from its split pattern)
or a SentencePiece-style BPE with byte fallback (`llama`, with scores), its merges, special tokens and chat template.

Tensors stream from the safetensors files to the GGUF file one at a time, so a model needs no more memory than its
largest tensor. The file types (`TYPES`): f32, f16, bf16, q8_0 and q4_0. Norms and biases stay float32 as llama.cpp
keeps them; a matrix whose rows are not a whole number of quantisation blocks is written f16, as llama.cpp does. Q4_K
is not offered: the `gguf` package can read it but not write it; q4_0 is the nearest it writes (llama.cpp's
`llama-quantize` turns a q8_0 or f16 file into Q4_K_M where that tool is installed).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ftcore.deploy.fidelity import LogitCheck, compare_logits
from ftcore.errors import UserError
from ftcore.models.gguf_families import FAMILIES, Family, family_refusal

# A file type -> (the GGML type of its matrices, llama.cpp's general.file_type for it), by gguf's names.
TYPES = {"f32": ("F32", "ALL_F32"), "f16": ("F16", "MOSTLY_F16"), "bf16": ("BF16", "MOSTLY_BF16"),
         "q8_0": ("Q8_0", "MOSTLY_Q8_0"), "q4_0": ("Q4_0", "MOSTLY_Q4_0")}
# In a 4-bit file the embeddings and the output layer stay 8-bit: llama.cpp keeps them above 4 bits too, since a
# 4-bit output layer costs the most quality per byte saved.
KEPT_AT_8_BITS = ("token_embd.weight", "output.weight")


def refusal(folder: Path) -> str | None:
    """Why the model folder cannot be written as GGUF, in one line; None when it can."""
    config = json.loads((folder / "config.json").read_text())
    causal = any(a.endswith("ForCausalLM") for a in config.get("architectures") or [])
    if problem := family_refusal(config.get("model_type"), causal):
        return problem
    kind, _, _ = _rope(config)
    if kind not in ("default", "linear"):
        return (f"rope scaling {kind!r} is not written to GGUF here (default and linear are); convert with "
                "llama.cpp's convert_hf_to_gguf.py")
    if not (folder / "tokenizer.json").is_file():
        return "the folder has no tokenizer.json (a fast tokenizer), which the GGUF vocabulary is written from"
    return None


def write_gguf(folder: Path, out: Path, file_type: str, name: str) -> None:
    """`out`: the causal LM in `folder` (config.json, safetensors, tokenizer.json) as a GGUF file of `file_type`,
    named `name` (general.name: what llama.cpp and Ollama list it as)."""
    import gguf
    import numpy as np

    if problem := refusal(folder):
        raise UserError(f"gguf: {problem}")
    config = json.loads((folder / "config.json").read_text())
    family = FAMILIES[config["model_type"]]
    partial = out.with_name(out.name + ".partial")  # renamed once whole: no half-written file under `out`'s name
    writer = gguf.GGUFWriter(partial, family.arch)
    _add_hyperparameters(writer, config, name, file_type)
    _add_vocabulary(writer, folder, config["vocab_size"])
    tensors = list(_tensors(folder, config, family, file_type))
    for tensor_name, _, qtype, shape in tensors:
        byte_shape = gguf.quant_shape_to_byte_shape(shape, qtype)
        writer.add_tensor_info(tensor_name, byte_shape, np.dtype(np.uint8), math.prod(byte_shape), raw_dtype=qtype)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for _, load, qtype, _ in tensors:
            writer.write_tensor_data(gguf.quantize(load(), qtype))
        writer.close()
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    partial.rename(out)


def _rope(config: dict[str, Any]) -> tuple[str, float, float | None]:
    """(scaling kind, base frequency, scaling factor) of a config in transformers 5's form (`rope_parameters`) or the
    older one (`rope_theta` and `rope_scaling` with `type`)."""
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    kind = params.get("rope_type") or params.get("type") or "default"
    return kind, params.get("rope_theta", config.get("rope_theta", 10000.0)), params.get("factor")


def _add_hyperparameters(writer, config: dict[str, Any], name: str, file_type: str) -> None:
    import gguf

    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    rope_kind, rope_theta, rope_factor = _rope(config)
    writer.add_name(name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(rope_theta)
    if rope_kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope_factor)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(getattr(gguf.LlamaFileType, TYPES[file_type][1]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_vocabulary(writer, folder: Path, vocab_size: int) -> None:
    """The tokenizer as llama.cpp reads it: GPT-2-style byte-level BPE (through `gguf`'s reader), or Llama/Mistral's
    SentencePiece-style BPE with byte fallback (read here from tokenizer.json: `gguf`'s reader loads the tokenizer
    and takes its whole vocabulary once per special token, half a minute for Mistral's 771, and gives every token
    the same placeholder score, which would leave llama.cpp's merges unordered). Padded to the model's vocab_size
    with unused tokens, as llama.cpp's converter does; the merges, special tokens, chat template and whether the
    tokenizer adds BOS or EOS as the folder's tokenizer does them."""
    import gguf

    tokenizer_json = json.loads((folder / "tokenizer.json").read_text())
    model = tokenizer_json["model"]
    if model["type"] == "BPE" and model.get("byte_fallback"):
        kind, pre = "llama", None
        tokens, scores, types = _sentencepiece_bpe(tokenizer_json)
    else:
        try:
            vocab = gguf.vocab.BpeVocab(folder)
        except FileNotFoundError:
            raise UserError("gguf: the tokenizer is neither a byte-level BPE nor a SentencePiece-style BPE with byte "
                            "fallback, the two vocabularies written here") from None
        kind, pre = vocab.tokenizer_model, pre_tokenizer(tokenizer_json)
        tokens, scores, types = (list(column) for column in zip(*vocab.all_tokens(), strict=True))
    if len(tokens) > vocab_size:
        raise UserError(f"gguf: the tokenizer has {len(tokens)} tokens, more than the model's vocab_size {vocab_size}")
    for i in range(len(tokens), vocab_size):
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model(kind)
    if pre is not None:
        writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size)
    special.add_special_token = _adds_bos_eos(folder)
    special.add_to_gguf(writer, quiet=True)


def _sentencepiece_bpe(tokenizer_json: dict[str, Any]) -> tuple[list[bytes], list[float], list]:
    """(tokens, scores, types) by id of a SentencePiece-style BPE: byte tokens (`<0x0A>`) typed BYTE, the unknown
    token UNKNOWN, added tokens CONTROL (special) or USER_DEFINED, and scores from the merge order: llama.cpp merges
    the adjacent pair whose joined token scores highest, so a token made by an earlier merge scores higher; tokens no
    merge makes (characters, bytes, control tokens) score 0, as they are never a merge's result."""
    import gguf

    model = tokenizer_json["model"]
    added = {t["id"]: t for t in tokenizer_json.get("added_tokens", [])}
    by_id = {index: token for token, index in model["vocab"].items()} | {i: t["content"] for i, t in added.items()}
    count = max(by_id) + 1
    scores = [0.0] * count
    for rank, merge in enumerate(model["merges"]):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        index = model["vocab"].get(left + right)
        if index is not None and scores[index] == 0.0:
            scores[index] = -float(rank + 1)
    tokens, types = [], []
    for i in range(count):
        text = by_id.get(i, f"[PAD{i}]")
        tokens.append(text.encode("utf-8"))
        if text == model.get("unk_token"):
            types.append(gguf.TokenType.UNKNOWN)
        elif i in added:
            types.append(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
        elif len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL if i in by_id else gguf.TokenType.UNUSED)
    return tokens, scores, types


def _adds_bos_eos(folder: Path) -> dict[str, bool]:
    """Whether the folder's tokenizer puts BOS before and EOS after a text (read off one encoding, since the flags
    live in several places across tokenizer versions)."""
    from ftcore.models.load import reload_tokenizer

    tokenizer = reload_tokenizer(folder)
    ids = tokenizer("a")["input_ids"]
    return {"bos": tokenizer.bos_token_id is not None and ids[:1] == [tokenizer.bos_token_id],
            "eos": tokenizer.eos_token_id is not None and ids[-1:] == [tokenizer.eos_token_id]}


def pre_tokenizer(tokenizer_json: dict[str, Any]) -> str:
    """llama.cpp's name for a byte-level BPE's pre-tokenizer (`tokenizer.ggml.pre`), from its split pattern: GPT-2's
    built-in pattern, or one of the patterns transformers' GGUF reader knows by name (Llama 3's, Qwen2's, ...)."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    step = tokenizer_json.get("pre_tokenizer") or {}
    steps = step.get("pretokenizers", [step])
    splits = [s["pattern"].get("Regex") for s in steps if s.get("type") == "Split"]
    if not splits and any(s.get("type") == "ByteLevel" and s.get("use_regex", True) for s in steps):
        return "gpt-2"
    names = [name for name, pattern in GGUF_PRE_TOKENIZER_SPLITS.items() if splits and pattern == splits[0]]
    if not names:
        raise UserError("gguf: the tokenizer splits text with a pattern llama.cpp has no name for; convert with "
                        "llama.cpp's convert_hf_to_gguf.py, which knows more of them")
    return names[0]


def _tensors(folder: Path, config: dict[str, Any], family: Family, file_type: str):
    """(GGUF name, a loader of the float32 array as written, its GGML type, its shape) of each tensor, in file
    order. Tied embeddings are written once, without an output layer, as llama.cpp's converter writes them."""
    import gguf
    from safetensors import safe_open

    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, family.arch.upper()), config["num_hidden_layers"])
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    found: dict[str, tuple[Path, str]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                found[key] = (path, key)
    if config.get("tie_word_embeddings"):
        found.pop("lm_head.weight", None)  # llama.cpp and transformers both use the embeddings when output is absent
    for hf_name, (path, key) in found.items():
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UserError(f"gguf: {path.name}: tensor {hf_name} has no GGUF name for {family.arch}; convert with "
                            "llama.cpp's convert_hf_to_gguf.py")
        with safe_open(path, "pt") as f:
            shape = tuple(f.get_slice(key).get_shape())
        permute = (heads if hf_name.endswith("q_proj.weight") else kv_heads if hf_name.endswith("k_proj.weight")
                   else None) if family.rotary_permuted else None
        yield name, _loader(path, key, permute), _ggml_type(name, shape, file_type), shape


def _loader(path: Path, key: str, permute_heads: int | None):
    def load():
        from safetensors import safe_open

        with safe_open(path, "pt") as f:
            array = f.get_tensor(key).float().numpy()  # numpy has no bfloat16
        return _rotary_interleaved(array, permute_heads) if permute_heads else array
    return load


def _rotary_interleaved(weights, heads: int):
    """convert_hf_to_gguf's LlamaModel.permute: each head's rotary halves interleaved, as llama.cpp wants them."""
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _ggml_type(name: str, shape: tuple[int, ...], file_type: str):
    import gguf

    matrix = getattr(gguf.GGMLQuantizationType, TYPES[file_type][0])
    if len(shape) < 2:
        return gguf.GGMLQuantizationType.F32  # norms and biases
    if matrix == gguf.GGMLQuantizationType.Q4_0 and name in KEPT_AT_8_BITS:
        matrix = gguf.GGMLQuantizationType.Q8_0
    block, _ = gguf.GGML_QUANT_SIZES[matrix]
    return matrix if shape[-1] % block == 0 else gguf.GGMLQuantizationType.F16


def modelfile(gguf_name: str, folder: Path) -> str:
    """An Ollama Modelfile for the GGUF file beside it. Ollama reads the chat template from the file's
    `tokenizer.chat_template`; the stop words are the model's end-of-sequence tokens (generation_config.json's
    list where there is one: instruct models end a turn with a token of their own)."""
    from ftcore.models.load import reload_tokenizer

    tokenizer = reload_tokenizer(folder)
    settings = [json.loads((folder / f).read_text()) for f in ("generation_config.json", "config.json")
                if (folder / f).is_file()]
    ends = next((s["eos_token_id"] for s in settings if s.get("eos_token_id") is not None), tokenizer.eos_token_id)
    ids = ends if isinstance(ends, list) else [ends]
    stops = sorted({tokenizer.convert_ids_to_tokens(i) for i in ids if i is not None})
    lines = [f"FROM ./{gguf_name}", *(f"PARAMETER stop {json.dumps(s)}" for s in stops)]
    return "\n".join(lines) + "\n"


def read_back(path: Path):
    """(model, tokenizer) of the GGUF file at `path` through transformers' GGUF loader, in float32. The loader
    leaves `<arch>.attention.key_length` unread for some families (Qwen3 takes its default head_dim of 128), so the
    head size comes from the file's own key. The config is read from the header alone (gguf_header): transformers'
    own reading of it parses the whole vocabulary once more."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftcore.models.gguf_header import gguf_config, read_metadata

    metadata, tensor_names = read_metadata(path)
    config = gguf_config(path, metadata, tensor_names)
    key_length = metadata.get(f"{metadata['general.architecture']}.attention.key_length")
    if key_length and hasattr(config, "head_dim"):
        config.head_dim = key_length
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, config=config,
                                                 dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


# Prompts for the check when the version's test split gives none (preference pairs, or no dataset logged).
PLAIN_PROMPTS = ("The patient was given", "Question: what is the capital of France?\nAnswer:",
                 "def fibonacci(n):", "Once upon a time")


def check_gguf(folder: Path, path: Path, prompts: Sequence[str]) -> LogitCheck:
    """The GGUF file at `path` against the float32 model in `folder`."""
    from ftcore.models.load import load_trained

    return compare_logits(*load_trained(folder), *read_back(path), prompts, "read back by transformers' GGUF loader")
