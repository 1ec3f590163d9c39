"""A pretrained model as the user has it (a downloaded folder, a sharded checkpoint, a GGUF file, pickled weights, a
folder that ships its own code), checked from its files before anything is loaded: each problem is one line naming
the folder, the recipe field and the fix.

`ftflow validate` (and every command that validates a recipe) and the init stage ask `pretrained_source`; nothing
here reads weights or runs code from the folder. Hub ids are not checked here (nothing is on disk yet): their load
errors are made one line by `ftcore.models.load.loaded`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ftcore.errors import UserError
from ftcore.models.config import ModelConfig

SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
PICKLE_INDEX = "pytorch_model.bin.index.json"
GGUF_MAGIC = b"GGUF"
LFS_POINTER = b"version https://git-lfs"
# The vocabulary files of the tokenizer classes transformers has (a remote-code tokenizer may name its own).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "merges.txt", "spm.model",
                   "spiece.model", "sentencepiece.bpe.model", "tokenizer.tiktoken", "vocab.model")


@dataclass(frozen=True)
class PretrainedSource:
    """Where a pretrained base loads from: a local folder (or a hub id), the GGUF file in it to read instead of
    config.json and safetensors, whether its weights are only a pickle, and whether it loads with its own code. GGUF
    and pickled bases are `converted`: the init stage loads them once and saves them as a safetensors folder, which
    every later stage loads."""

    location: Path | str
    gguf_file: str | None = None
    pickle_only: bool = False
    # A folder runs its own code only where it needs it (`needs_own_code`, which the recipe must allow), as every
    # later stage loads it again (`runs_own_code`); a hub id or GGUF file, whatever the recipe allows.
    own_code: bool = False

    @property
    def converted(self) -> bool:
        return self.gguf_file is not None or self.pickle_only

    @property
    def label(self) -> str:
        """The folder, or the GGUF file in it, as messages name it."""
        if self.gguf_file is not None and isinstance(self.location, Path):
            return str(self.location / self.gguf_file)
        return str(self.location)


def pretrained_source(cfg: ModelConfig, files: bool = True) -> PretrainedSource:
    """The recipe's pretrained base (`model.source: pretrained`), checked from its files: UserError, one line, for a
    folder that cannot load or may not be loaded as the recipe stands. `files=False` checks what reading its
    config needs only (planning: a folder may hold config.json before its weights are downloaded)."""
    from ftcore.models.load import resolve_pretrained, runs_own_code

    name = cfg.name_or_path or ""
    given = Path(name).expanduser()
    gguf_file = cfg.gguf_file
    if given.is_file():
        if given.suffix.lower() != ".gguf":
            raise UserError(f"model.name_or_path: {name} is a file, not a model folder; give the folder that holds "
                            "config.json (or a .gguf file)")
        given, gguf_file = given.parent, given.name
    location = resolve_pretrained(str(given))
    if not isinstance(location, Path):
        if _looks_like_a_path(name):
            raise UserError(f"model.name_or_path: no such folder {name}; give the folder of a downloaded model "
                            "(the one that holds config.json)")
        # a hub id: nothing on disk to check yet
        return PretrainedSource(location, gguf_file, own_code=cfg.trust_remote_code)
    if gguf_file is not None:
        _check_gguf(location, gguf_file)
        return PretrainedSource(location, gguf_file, own_code=cfg.trust_remote_code)
    pickle_only = _check_folder(location, cfg, files)
    return PretrainedSource(location, pickle_only=pickle_only, own_code=runs_own_code(location))


def check_pretrained(cfg: ModelConfig, files: bool = True) -> None:
    """`pretrained_source`'s checks where the recipe's base is pretrained (nothing to check for the others)."""
    if cfg.source == "pretrained" and cfg.name_or_path:
        pretrained_source(cfg, files)


def _looks_like_a_path(name: str) -> bool:
    """A hub id is NAME or OWNER/NAME; anything else (absolute, ./, ~, deeper) can only be a local path."""
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1


def _check_gguf(folder: Path, gguf_file: str) -> None:
    path = folder / gguf_file
    if not path.is_file():
        found = sorted(p.name for p in folder.glob("*.gguf"))
        if found:
            raise UserError(f"model.gguf_file: no {gguf_file} in {folder}; name one of the .gguf files there: "
                            f"{', '.join(found)}")
        raise UserError(f"model.gguf_file: no {gguf_file} in {folder}, nor any other .gguf file; give the folder the "
                        "file was downloaded into as model.name_or_path")
    head = _head(path)
    if head.startswith(LFS_POINTER):
        raise UserError(f"model.gguf_file: {path} is a Git LFS pointer, not the file; run `git lfs pull` in "
                        f"{folder} (or download the file itself)")
    if not head.startswith(GGUF_MAGIC):
        raise UserError(f"model.gguf_file: {path} is not a GGUF file (it does not start with GGUF's magic bytes); "
                        "download it again")


def _check_folder(folder: Path, cfg: ModelConfig, files: bool) -> bool:
    """Check a local model folder (its config only, unless `files`); True when its weights are only a pickle (and
    `model.allow_pickle` allows it)."""
    if not folder.is_dir():
        raise UserError(f"model.name_or_path: {folder} is not a folder; give the folder that holds config.json")
    config = _read_config(folder)
    _check_architecture(folder, config, cfg.trust_remote_code)
    if not files:
        return False
    for index in (SAFETENSORS_INDEX, PICKLE_INDEX):
        _check_shards(folder, index)
    weights = [p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file()]
    for path in weights:
        if _head(path).startswith(LFS_POINTER):
            raise UserError(f"model.name_or_path: {path} is a Git LFS pointer, not the weights; run `git lfs pull` "
                            f"in {folder} (or download the files themselves)")
    safetensors = any(p.suffix == ".safetensors" for p in weights)
    pickled = any(p.name.startswith("pytorch_model") and p.suffix == ".bin" for p in weights)
    if not safetensors and not pickled:
        raise UserError(f"model.name_or_path: {folder} has config.json but no weights (*.safetensors or "
                        "pytorch_model.bin); the download is incomplete: download the model's weight files into it")
    if not safetensors and not cfg.allow_pickle:
        raise UserError(f"model.allow_pickle: {folder} has its weights only as a pickle (pytorch_model.bin), and "
                        "loading a pickle can run code hidden in it; convert it to safetensors (transformers: "
                        "save_pretrained(..., safe_serialization=True)), or for a file you trust set "
                        "model.allow_pickle: true (it is read with torch.load(weights_only=True))")
    if not cfg.trust_remote_code and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(f"model.name_or_path: {folder} has no tokenizer files ({', '.join(TOKENIZER_FILES[:4])}, "
                        "...); copy in the tokenizer files that were downloaded with the model")
    return not safetensors


def _read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise UserError(f"model.name_or_path: {folder} has no config.json, so it is not a transformers model "
                        f"folder; {_where_instead(folder)}")
    return read_json_object(path, "model.name_or_path", "; download it again")


def read_json_object(path: Path, field: str, fix: str = "") -> dict:
    """A JSON object from `path` (a config.json), or one line naming `field` and the file: not UTF-8, not JSON (with
    the line), or not an object; `fix` ends the message."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        where = f" (line {e.lineno}: {e.msg})" if isinstance(e, json.JSONDecodeError) else " (not UTF-8)"
        raise UserError(f"{field}: {path} is not valid JSON{where}{fix}") from None
    if not isinstance(value, dict):
        raise UserError(f"{field}: {path} is not a JSON object{fix}")
    return value


def _where_instead(folder: Path) -> str:
    """The fix for a folder without config.json: the model folder inside it, the GGUF file it holds, or the base of
    the adapter it is."""
    if (folder / "adapter_config.json").is_file():
        try:
            base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
        except (UnicodeDecodeError, json.JSONDecodeError):
            base = None
        return ("it is a PEFT adapter (adapter_config.json), not a model: give its base model"
                + (f" ({base})" if base else "") + " as name_or_path")
    ggufs = sorted(p.name for p in folder.glob("*.gguf"))
    if ggufs:
        return f"it holds {', '.join(ggufs)}: set model.gguf_file to the one to load"
    inside = sorted(p.parent for p in [*folder.glob("*/config.json"), *folder.glob("snapshots/*/config.json")])
    if inside:
        return f"give the model folder inside it: {inside[0]}"
    return "give the folder of a downloaded model (the one that holds config.json), or a .gguf file"


def _check_architecture(folder: Path, config: dict, trust_remote_code: bool) -> None:
    """A model_type transformers knows loads with transformers' own classes (trust_remote_code or not: with it off,
    a folder's auto_map is ignored). Any other needs the folder's code (auto_map), which runs only when the recipe
    trusts it."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    from ftcore.models.load import needs_own_code

    model_type = config.get("model_type")
    if model_type in CONFIG_MAPPING_NAMES:
        return
    if needs_own_code(config):
        if trust_remote_code:
            return
        auto_map = config["auto_map"]
        code = auto_map.get("AutoConfig") if isinstance(auto_map, dict) else None
        raise UserError(f"model.trust_remote_code: {folder} needs its own Python code to load (config.json's "
                        f"auto_map{f' names {code}' if code else ''}; transformers has no {model_type!r} model), and "
                        "ftflow runs no code from a model folder unless the recipe sets model.trust_remote_code: "
                        "true; set it only for a folder whose code you have read and trust")
    what = f"model_type {model_type!r}" if model_type else "no model_type"
    raise UserError(f"model.name_or_path: {folder}: config.json has {what}, which transformers "
                    f"{transformers.__version__} does not know; upgrade transformers if the model is newer than it, "
                    "or give a folder of a supported architecture")


def _check_shards(folder: Path, index: str) -> None:
    path = folder / index
    if not path.is_file():
        return
    try:
        shards = set(json.loads(path.read_text(encoding="utf-8"))["weight_map"].values())
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise UserError(f"model.name_or_path: {path} is not a valid shard index; download it again") from None
    missing = sorted(shard for shard in shards if not (folder / str(shard)).is_file())
    if missing:
        raise UserError(f"model.name_or_path: {folder} lacks {len(missing)} of the {len(shards)} weight shards "
                        f"{index} names ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); the "
                        "download is incomplete: download them into it")


def _head(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(64)


def tokenizer_size(tokenizer) -> int:
    """How many embedding rows the tokenizer's ids need: its highest id + 1 (a vocabulary may have holes)."""
    return max(len(tokenizer), max(tokenizer.get_vocab().values(), default=-1) + 1)


def fit_gguf_vocabulary(model, tokenizer) -> None:
    """Give a GGUF base a row for each token transformers' GGUF converter adds to the file's vocabulary: a byte-level
    BPE file without an unknown token (Llama 3's, Qwen2's) gets GPT-2's `<|endoftext|>` as one, an id past the
    file's embeddings. Weights and tokenizer come from the same file, so that is the only way they can differ."""
    size = tokenizer_size(tokenizer)
    if size > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(size, mean_resizing=True)


def check_vocabulary(model, tokenizer, where: str) -> None:
    """Refuse a tokenizer whose token ids index past the model's input embeddings (tokenizer files of another model
    or size copied into the folder): the first batch would fail with an index error deep in torch, or on a GPU
    with a device-side assert."""
    rows = model.get_input_embeddings().weight.shape[0]
    size = tokenizer_size(tokenizer)
    if size > rows:
        raise UserError(f"model.name_or_path: the tokenizer in {where} has {size} tokens but the model's embedding "
                        f"table has {rows} rows, so ids from {rows} up would index past it; use the tokenizer files "
                        "downloaded with these weights")
