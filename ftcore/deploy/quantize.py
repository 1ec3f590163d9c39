"""8-bit weights for CPU inference, with torchao, and the sizes of weight files.

The scheme is weight-only int8, symmetric, one scale per output channel: every `nn.Linear` weight (torchao's
`Int8WeightOnlyConfig`, per row) and every `nn.Embedding` (`IntxWeightOnlyConfig` at 8 bits, per row). Activations,
norms and biases stay float32 and each weight is dequantised as it is used, so no calibration data is needed. The
embeddings and the output layer are quantised too: in small models they are most of the weights, and leaving them in
float32 would keep the export near 40% of the float32 size instead of about 27%.

The folder is a plain transformers folder whose config carries the quantization config: `from_pretrained` (so
`load_trained`) loads it back quantised wherever torchao is installed.
"""

from __future__ import annotations

import math
import re
import tempfile
from pathlib import Path

from ftcore.models.load import (
    MODEL_BUILD_LOCK,
    folder_sees_images,
    reload_model,
    reload_processing,
    runs_own_code,
    saved_classes,
)

# A GGUF file holds the vocabulary too: it is the whole model; an ONNX graph keeps its weights beside it (.data).
WEIGHT_FILES = ("*.safetensors", "*.gguf", "*.onnx", "*.onnx.data")


def write_int8(src: Path, out: Path) -> None:
    """The model folder `src` (its top-level weights: a merged model, a full fine-tune, or a base whose adapter is
    kept apart) with its weights in int8, written to `out` with the tokenizer."""
    import torch

    classes = saved_classes(src)
    modules = skeleton(src, classes)
    with tempfile.TemporaryDirectory(prefix=".untied.", dir=out.parent) as tmp:
        source = untied_copy(src, classes, Path(tmp)) if ties_embeddings(modules) else src
        model = reload_model(source, classes, quantization_config=int8_config(modules), dtype=torch.float32)
        model.save_pretrained(out, safe_serialization=True)
    reload_processing(src).save_pretrained(out)


def int8_config(modules):
    """transformers' TorchAoConfig for the scheme above, naming the modules of each kind by their last name (e.g.
    `q_proj`, `embed_tokens`): torchao's int8 Linear scheme does not apply to embeddings, and transformers quantises
    only what a config names. `modules`: the model's `skeleton`."""
    import torch
    from torchao.quantization import FqnToConfig, Int8WeightOnlyConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerAxis
    from transformers import TorchAoConfig

    schemes = {torch.nn.Embedding: IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0)),
               torch.nn.Linear: Int8WeightOnlyConfig()}
    fqn_to_config = {}
    for module_type, scheme in schemes.items():
        names = {name.rsplit(".", 1)[-1] for name, m in modules.named_modules() if isinstance(m, module_type)}
        if names:
            fqn_to_config[f"re:(.+\\.)?({'|'.join(sorted(map(re.escape, names)))})\\.weight"] = scheme
    return TorchAoConfig(FqnToConfig(fqn_to_config), include_input_output_embeddings=True)


def skeleton(folder: Path, classes: list[str] | None):
    """The model's modules without its weights (on the meta device): to name them before loading."""
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoModelForSequenceClassification,
    )

    if classes is not None:
        auto = AutoModelForSequenceClassification
    else:
        auto = AutoModelForImageTextToText if folder_sees_images(folder) else AutoModelForCausalLM
    with MODEL_BUILD_LOCK, torch.device("meta"):  # from_config sets torch's default dtype while it builds
        trusted = runs_own_code(folder)
        return auto.from_config(AutoConfig.from_pretrained(folder, trust_remote_code=trusted),
                                trust_remote_code=trusted)


def ties_embeddings(modules) -> bool:
    """Whether the output layer is the input embeddings' tensor (the model's `skeleton`)."""
    return modules.get_output_embeddings() is not None and bool(getattr(modules.config, "tie_word_embeddings", False))


def untied_copy(src: Path, classes: list[str] | None, tmp: Path) -> Path:
    """`src` with its output layer a copy of the input embeddings rather than the same tensor. transformers 5.23
    cannot load a torchao-quantised embedding that is tied (it compares the tied tensors, which torchao's tensors do
    not implement), so each is quantised on its own."""
    import torch

    model = reload_model(src, classes, dtype=torch.float32)
    model.config.tie_word_embeddings = False
    output = model.get_output_embeddings()
    output.weight = torch.nn.Parameter(output.weight.detach().clone())
    model.save_pretrained(tmp, safe_serialization=True)
    return tmp


def weight_bytes(folder: Path) -> int:
    """The size of the weight files in `folder` and below (an adapter kept apart included)."""
    return sum(f.stat().st_size for pattern in WEIGHT_FILES for f in Path(folder).rglob(pattern))


def float32_bytes(files: list[Path]) -> int:
    """What the tensors in these safetensors files take in float32, whatever dtype they are stored in."""
    from safetensors import safe_open

    total = 0
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            total += sum(4 * math.prod(f.get_slice(key).get_shape()) for key in f.keys())  # noqa: SIM118
    return total
