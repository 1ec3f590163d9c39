"""`ftflow inspect MODEL`: what a model is and what ftflow can fine-tune it for, from its config alone.

MODEL is a model folder (its config.json), a GGUF file (its metadata, ftcore/models/gguf_header.py) or a registered
version (`models:/NAME@ALIAS`, `models:/NAME/VERSION`, fetched as every command fetches one, through
ftcore/models/registered.py). No weight is read: the parameter count comes from the model built on PyTorch's meta
device (ftcore/models/meta.py), which methods fit which objectives from the rule table (ftcore/models/support.py),
and the default target modules from ftflow's own `apply_method` run on a meta model, so they are the modules
training would wrap. A vision-language model's vision side comes from ftcore/models/inspect_vision.py.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ftcore.errors import UserError, first_line
from ftcore.models.inspect_vision import VisionReport, vision_facts, vision_report

FIELD = "MODEL"  # what the messages call the argument
# The config keys of the context length, by family (GPT-2's n_positions, ...), first found wins.
CONTEXT_KEYS = ("n_positions", "max_position_embeddings", "max_sequence_length", "seq_length", "max_seq_len",
                "n_ctx")
# Chat templates a model folder can ship: a file of its own, or a key of tokenizer_config.json.
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
# Files a tokenizer without tokenizer.json loads from (sentencepiece, WordPiece, BPE vocabularies).
TOKENIZER_FILES = ("tokenizer.model", "spm.model", "spiece.model", "sentencepiece.bpe.model", "vocab.txt",
                   "vocab.json", "tokenizer.tiktoken")
GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class ModelReport:
    source: str  # what was asked for
    path: str  # the folder or GGUF file read
    format: str  # "folder" or "gguf"
    registered: str | None  # NAME/VERSION of a registered version
    model_type: str
    architecture: str  # the transformers class
    decoder: bool  # a causal LM (else an encoder, which classifies)
    modality: str  # "text" or "vision-language"
    parameters: int  # every parameter, a tied weight once
    dtype: str | None  # the checkpoint's (the config's dtype, a GGUF file's type)
    context_length: int | None
    context_key: str | None  # the config key it was read from
    sliding_window: int | None
    sliding_layers: int | None  # the layers with the window, where the config lists layer types
    num_layers: int | None
    config_vocab_size: int | None  # rows of the input embedding
    tokenizer_vocab_size: int | None  # tokens of the tokenizer (added tokens too); None: no tokenizer found
    chat_template: bool
    chat_template_source: str | None  # the file (or GGUF key) it is in
    licence: str  # the model card's `license:` ("unknown" when it states none)
    methods: dict[str, dict[str, str | None]]  # objective -> method -> why it is refused (None: supported)
    target_modules: dict[str, list[str]]  # "all-linear", "adapter", "ia3", "ia3_feedforward" -> module names
    target_notes: dict[str, str]  # why a method has no default targets on this model
    all_linear_methods: list[str]  # the methods whose default targets are "all-linear"
    vision: VisionReport | None = None  # a vision-language model's vision side

    @property
    def vocab_note(self) -> str | None:
        """What a disagreement between the config's and the tokenizer's vocabulary sizes means, if there is one."""
        rows, tokens = self.config_vocab_size, self.tokenizer_vocab_size
        if rows is None or tokens is None or rows == tokens:
            return None
        if rows > tokens:
            return f"the embedding has {rows - tokens:,} rows no token uses (padding, as many releases have)"
        return (f"the tokenizer has {tokens - rows:,} tokens more than the embedding has rows: ids from {rows:,} up "
                "would index past it (tokenizer files of another model?)")

    def supported(self, objective: str) -> list[str]:
        return [method for method, reason in self.methods[objective].items() if reason is None]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"vocab_note": self.vocab_note}


def inspect_model(model: str | Path) -> ModelReport:
    """Describe a model folder, a GGUF file or a registered version (`models:/NAME@ALIAS`, `models:/NAME/VERSION`)
    from its config alone. A model that cannot be read is a one-line UserError."""
    source = str(model)
    path, registered = _resolve(source)
    if path.is_file():
        return _gguf_report(source, path)
    config, raw = _folder_config(path, registered is not None)
    template = _folder_chat_template(path)
    report = _report(source, path, "folder", registered, config, dtype=_config_dtype(config, raw),
                     tokens=_tokenizer_size(path), chat_template=template, licence=card_licence(path))
    if report.modality != "vision-language":
        return report
    from ftcore.models.load import needs_own_code

    return replace(report, vision=vision_report(config, path, registered is not None and needs_own_code(raw)))


def default_target_modules(config) -> list[str]:
    """The layers LoRA-like methods (lora, dora, qlora, loha, lokr) target by default on the model `config`
    describes: PEFT's `all-linear`, every linear layer but the output head (a classifier's too), as ftflow applies
    it, by name (the last part of each module's path, deduplicated, sorted)."""
    from ftcore.models.config import LoraMethod
    from ftcore.models.meta import meta_model

    return method_targets(meta_model(config, trained_class(config)), LoraMethod(), init_vision(config))[0]


def init_vision(config):
    """The train.vision init puts an adapter on by default (the language model; the projector trains whole) for a
    vision-language model, None for a text model."""
    from ftcore.models.config import VisionParts
    from ftcore.models.load import sees_images

    return VisionParts() if sees_images(config.to_dict()) else None


def trained_class(config):
    """The class ftflow fine-tunes the model as: its own, or for an encoder (which only classifies) its
    sequence-classification class."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    from ftcore.models.meta import architecture_class
    from ftcore.models.support import ModelKind

    model_class = architecture_class(config)
    if ModelKind.of(config).decoder or model_class.__name__.endswith("ForSequenceClassification"):
        return model_class
    name = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.get(config.model_type)
    return getattr(transformers, name) if name else model_class


def method_targets(model, method, vision=None) -> tuple[list[str], list[str]]:
    """The modules ftflow's `apply_method` wraps for `method` (a method config) in `model` (a meta model, which it
    changes; on a vision-language model, the parts `vision`, a train.vision, trains), by name, and those of them that
    IA3 rescales on their input (its feed-forward modules); a projector trained whole beside an adapter is not
    among them. A weight
    adapted as a parameter rather than a layer (PEFT's `target_parameters`: the fused experts of a mixture of
    experts, which PEFT targets on Mixtral for all-linear) is named MODULE.PARAMETER. A method that does not fit the
    model raises UserError."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from ftcore.models.peft_methods import apply_method

    with warnings.catch_warnings():  # PEFT's notes on the model it wraps (GPT-2's Conv1D, Mixtral's experts)
        warnings.simplefilter("ignore")
        wrapped = apply_method(model, method, vision=vision)
    names, feedforward = set(), set()
    for path, module in wrapped.named_modules():
        if isinstance(module, BaseTunerLayer):
            while path.endswith(".base_layer"):  # each further parameter of a module wraps the wrapper before
                path = path.removesuffix(".base_layer")
            name = path.rsplit(".", 1)[-1]
            if parameter := getattr(module, "parameter_name", None):
                name = f"{name}.{parameter}"
            names.add(name)
            if getattr(module, "is_feedforward", False):
                feedforward.add(name)
    return sorted(names), sorted(feedforward)


# ---------------------------------------------------------------------------------------------------------------
# Where the model is


def _resolve(source: str) -> tuple[Path, str | None]:
    """The folder or file to read, and the registered version (NAME/VERSION) it is, if it is one."""
    if source.startswith("models:/"):
        from ftcore.models.config import MODEL_URI
        from ftcore.models.registered import model_folder, pin_reference

        if not MODEL_URI.match(source):
            raise UserError(f"{FIELD}: {source!r} is neither models:/NAME@ALIAS nor models:/NAME/VERSION")
        ref = pin_reference(source, FIELD)
        return model_folder(ref), ref.label
    path = Path(source).expanduser()
    if path.is_file():
        with path.open("rb") as f:
            if f.read(4) != GGUF_MAGIC:
                raise UserError(f"{FIELD}: {source} is a file but not a GGUF file (it does not start with GGUF's "
                                "magic bytes); give a model folder (the one holding config.json), a .gguf file, or "
                                "models:/NAME@ALIAS")
        return path.resolve(), None
    if not path.is_dir():
        raise UserError(f"{FIELD}: no such folder or file {source}; give a model folder (the one holding "
                        "config.json), a .gguf file, or models:/NAME@ALIAS")
    if not (path / "config.json").is_file():
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        inside = sorted(p.parent for p in path.glob("*/config.json"))
        hint = (f"it holds {', '.join(ggufs)}: give the file itself" if ggufs else
                f"give the model folder inside it: {inside[0]}" if inside else
                "give the folder that holds config.json, or a .gguf file")
        raise UserError(f"{FIELD}: {source} has no config.json, so it is not a model folder; {hint}")
    return path.resolve(), None


def _folder_config(path: Path, registered: bool):
    """(transformers config, config.json as a dict); an architecture transformers does not know is refused here
    rather than run from the folder's own code, unless the folder is a `registered` version that needs its code: a
    recipe allowed it to run (`runs_own_code`)."""
    import transformers
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    from ftcore.models.folders import read_json_object
    from ftcore.models.load import needs_own_code

    file = path / "config.json"
    raw = read_json_object(file, FIELD)
    model_type = raw.get("model_type")
    own_code = registered and needs_own_code(raw)
    if model_type not in CONFIG_MAPPING_NAMES and not own_code:
        what = f"model_type {model_type!r}" if model_type else "no model_type"
        code = "; its auto_map names code of its own, which ftflow does not run" if raw.get("auto_map") else ""
        raise UserError(f"{FIELD}: {file} has {what}, an architecture transformers {transformers.__version__} does "
                        f"not know{code}; upgrade transformers if the model is newer than it")
    try:
        return AutoConfig.from_pretrained(str(path), trust_remote_code=own_code), raw
    except (OSError, ValueError, StrictDataclassError) as e:
        raise UserError(f"{FIELD}: {file}: {first_line(e)}") from None


def _gguf_report(source: str, path: Path) -> ModelReport:
    from ftcore.models.gguf_header import CHAT_TEMPLATE, FILE_TYPE, LICENCE, TOKENS, gguf_config, read_metadata

    metadata, tensor_names = read_metadata(path)
    config = gguf_config(path, metadata, tensor_names)
    licence = metadata.get(LICENCE) or card_licence(path.parent)
    tokens = metadata.get(TOKENS)
    return _report(source, path, "gguf", None, config, dtype=_gguf_file_type(metadata.get(FILE_TYPE)),
                   tokens=tokens if isinstance(tokens, int) else None,
                   chat_template=CHAT_TEMPLATE if metadata.get(CHAT_TEMPLATE) else None, licence=str(licence))


def _gguf_file_type(value: int | None) -> str | None:
    """llama.cpp's name of a GGUF file type (general.file_type): F16, Q4_K_M, ..."""
    import gguf

    if value is None:
        return None
    try:
        return gguf.LlamaFileType(value).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except ValueError:
        return f"file type {value}"


# ---------------------------------------------------------------------------------------------------------------
# The report


def _report(source: str, path: Path, format_: str, registered: str | None, config, *, dtype: str | None,
            tokens: int | None, chat_template: str | None, licence: str) -> ModelReport:
    from ftcore.models.config import METHODS
    from ftcore.models.meta import architecture_class, count_params, meta_model
    from ftcore.models.support import ModelKind, supported_methods
    from ftcore.objectives import OBJECTIVES

    text = config.get_text_config()
    model_class, trained = architecture_class(config), trained_class(config)
    with warnings.catch_warnings():  # transformers' deprecation notes on building a model
        warnings.simplefilter("ignore")
        model = meta_model(config, model_class)
        parameters = count_params(model)[1]
        targets, notes = _default_targets(config, trained, model if trained is model_class else None)
    context_length, context_key = _context(text)
    window, sliding_layers = _sliding_window(text)
    kind = ModelKind.of(config)
    return ModelReport(
        source=source, path=str(path), format=format_, registered=registered, model_type=config.model_type,
        architecture=model_class.__name__, decoder=kind.decoder,
        modality="vision-language" if getattr(config, "vision_config", None) is not None else "text",
        parameters=parameters, dtype=dtype, context_length=context_length, context_key=context_key,
        sliding_window=window, sliding_layers=sliding_layers, num_layers=getattr(text, "num_hidden_layers", None),
        config_vocab_size=getattr(text, "vocab_size", None), tokenizer_vocab_size=tokens,
        chat_template=chat_template is not None, chat_template_source=chat_template, licence=licence,
        methods={name: supported_methods(kind, objective) for name, objective in OBJECTIVES.items()},
        target_modules=targets, target_notes=notes,
        all_linear_methods=[m.model_fields["name"].default for m in METHODS
                            if getattr(m.model_fields.get("target_modules"), "default", None) == "all-linear"],
    )


def _default_targets(config, model_class, model=None) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The modules LoRA-like methods (all-linear), bottleneck adapters and IA3 wrap by default, each applied by
    ftflow's `apply_method` to a meta model of `model_class` (`model`, one already counted, serves the first);
    why one has none."""
    from ftcore.models.config import BottleneckAdapterMethod, Ia3Method, LoraMethod
    from ftcore.models.meta import meta_model

    targets: dict[str, list[str]] = {}
    notes: dict[str, str] = {}
    for key, method in (("all-linear", LoraMethod()), ("adapter", BottleneckAdapterMethod()), ("ia3", Ia3Method())):
        wrapped, model = model or meta_model(config, model_class), None  # apply_method changes the model
        try:
            names, feedforward = method_targets(wrapped, method, init_vision(config))
        except UserError as e:  # the method has no default on this architecture: the recipe must name targets
            notes[key] = str(e).removeprefix("method: ")
            continue
        except Exception as e:  # PEFT could not wrap this architecture on a meta model: the rest of the report
            # stands, and the note says what failed (`default_target_modules` itself raises)
            notes[key] = f"PEFT could not apply it to a meta model of {model_class.__name__} ({type(e).__name__}: " \
                f"{first_line(e)})"
            continue
        targets[key] = names
        if key == "ia3":
            targets["ia3_feedforward"] = feedforward
    return targets, notes


def _config_dtype(config, raw: dict[str, Any]) -> str | None:
    dtype = getattr(config, "dtype", None) or raw.get("torch_dtype") or getattr(config.get_text_config(), "dtype",
                                                                                None)
    return None if dtype is None else str(dtype).removeprefix("torch.")


def _context(text) -> tuple[int | None, str | None]:
    for key in CONTEXT_KEYS:
        value = getattr(text, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, key
    return None, None


def _sliding_window(text) -> tuple[int | None, int | None]:
    """(the width of the sliding attention window, the layers that have it where the config lists layer types)."""
    window = getattr(text, "local_attention", None)  # ModernBERT: its local layers' window
    if not window and getattr(text, "use_sliding_window", True) is not False:  # Qwen2 keeps it off by default
        window = getattr(text, "sliding_window", None)
    if not isinstance(window, int) or window <= 0:
        return None, None
    layer_types = getattr(text, "layer_types", None)
    if not layer_types:
        return window, None
    sliding = sum("sliding" in kind or "local" in kind for kind in layer_types)
    return (window, sliding) if sliding else (None, None)


def _tokenizer_size(folder: Path) -> int | None:
    """The tokenizer's vocabulary, added tokens included (what len(tokenizer) gives); None without a tokenizer."""
    if (folder / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        try:
            return Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
        except Exception:  # the tokenizers library raises a bare Exception for a file it cannot parse
            return None
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    try:
        return len(AutoTokenizer.from_pretrained(str(folder)))
    except (OSError, ValueError, ImportError):
        return None


def _folder_chat_template(folder: Path) -> str | None:
    """The file a folder's chat template is in, or None."""
    for name in CHAT_TEMPLATE_FILES:
        if (folder / name).is_file():
            return name
    try:
        tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if isinstance(tokenizer_config, dict) and tokenizer_config.get("chat_template"):
        return "tokenizer_config.json"
    return None


def card_licence(folder: Path) -> str:
    """The licence the model card (README.md) names in its front matter (`license:` between `---` lines):
    `other (NAME)` where it names its own (`license_name:`), "unknown" where it names none."""
    import yaml

    try:
        lines = (folder / "README.md").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "unknown"
    if not lines or lines[0].strip() != "---":
        return "unknown"
    end = next((i for i in range(1, len(lines)) if lines[i].strip() == "---"), None)
    try:
        meta = yaml.safe_load("\n".join(lines[1:end])) if end else None
    except yaml.YAMLError:
        return "unknown"
    licence = meta.get("license") if isinstance(meta, dict) else None
    if isinstance(licence, list):
        licence = ", ".join(map(str, licence))
    if not licence:
        return "unknown"
    if licence == "other" and meta.get("license_name"):
        return f"other ({meta['license_name']})"
    return str(licence)


# ---------------------------------------------------------------------------------------------------------------
# For people (`--json` is ModelReport.to_dict)


def render_report(report: ModelReport):
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from ftcore.models.config import METHOD_NAMES

    def grid(rows: list[tuple[str, str]], title: str | None = None):
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        for name, value in rows:
            table.add_row(name, Text(value))
        return Group(Text(title, style="bold"), table) if title else table

    methods = Table(title="methods by objective", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                    collapse_padding=True)
    for column in ("objective", "supported", "refused"):
        methods.add_column(column)
    reasons: dict[str, tuple[list[str], list[str]]] = {}  # reason -> (methods, objectives), each reason once
    for objective, verdicts in report.methods.items():
        supported = report.supported(objective)
        refused = [method for method in verdicts if method not in supported]
        methods.add_row(objective, Text(_methods(supported, len(verdicts)) or "none"),
                        Text(_methods(refused, len(verdicts)) or "-"))
        for method in refused:
            named, objectives = reasons.setdefault(verdicts[method], ([], []))
            if method not in named:
                named.append(method)
            if objective not in objectives:
                objectives.append(objective)
    why = [(f"{_methods(named, len(METHOD_NAMES))} ({', '.join(objectives)})", reason)
           for reason, (named, objectives) in reasons.items()]

    targets = []
    for key in ("all-linear", "adapter", "ia3"):
        label = f"all-linear: {', '.join(report.all_linear_methods)}" if key == "all-linear" else key
        if key not in report.target_modules:
            targets.append((label, f"no default ({report.target_notes.get(key, '')}): name method.target_modules"))
            continue
        names = ", ".join(report.target_modules[key]) or "none"
        if key == "all-linear" and report.vision:  # peft_methods.on_vision_parts, with train.vision's defaults
            names += " (the language model's; the projector trains whole beside them)"
        if key == "ia3" and report.target_modules.get("ia3_feedforward"):
            names += f" (rescaled on their input: {', '.join(report.target_modules['ia3_feedforward'])})"
        targets.append((label, names))
    return Group(grid(_facts(report)), Text(""), methods, *([grid(why, "refused, and why"), Text("")] if why else []),
                 grid(targets, "default target modules"))


def _facts(report: ModelReport) -> list[tuple[str, str]]:
    where = report.path + (f" (registered {report.registered})" if report.registered else "")
    family = (f"{report.model_type} ({report.architecture}): {'decoder' if report.decoder else 'encoder'}, "
              f"{report.modality}")
    context = "unknown" if report.context_length is None else \
        f"{report.context_length:,} positions ({report.context_key})"
    if report.sliding_window is not None:
        layers = "every layer" if report.sliding_layers is None else \
            f"{report.sliding_layers} of {report.num_layers} layers"
        context += f"; sliding window {report.sliding_window:,} on {layers}"
    rows, tokens = report.config_vocab_size, report.tokenizer_vocab_size
    if tokens is None:
        vocabulary = f"{rows:,} (config; no tokenizer found)" if rows else "unknown"
    elif rows == tokens:
        vocabulary = f"{rows:,} (config and tokenizer agree)"
    else:
        vocabulary = f"{rows:,} in the config, {tokens:,} in the tokenizer: {report.vocab_note}"
    template = f"yes ({report.chat_template_source})" if report.chat_template else \
        "no (ftflow adds its default for chats)"
    return [
        ("model", where),
        ("family", family),
        ("parameters", f"{report.parameters:,} ({_short(report.parameters)}), counted from the config"),
        *(vision_facts(report.vision) if report.vision else []),
        ("dtype", report.dtype or "not stated"),
        ("context", context),
        ("vocabulary", vocabulary),
        ("chat template", template),
        ("licence", report.licence),
    ]


def _methods(names: list[str], of: int) -> str:
    return f"all {of}" if len(names) == of else ", ".join(names)


def _short(n: int) -> str:
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)
