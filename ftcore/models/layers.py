"""Where each family's blocks are, found from the model's own modules rather than a list of module names per family.

A transformer is a stack of identical blocks (`model.layers`, `transformer.h`, `encoder.layer`, ...); each block
has sub-blocks (attention, MLP: for BERT-style encoders the MLP is split into `intermediate` and `output`) and each
sub-block ends with a projection back to the model's width that writes into the residual stream: Llama's `o_proj`
and `down_proj`, GPT-2's `c_proj` (a Conv1D), GPT-NeoX's `dense` and `dense_4h_to_h`, OPT's `out_proj` and `fc2`,
BERT's `attention.output.dense` and `output.dense`, ModernBERT's `Wo`. Those are where bottleneck adapters go and
what IA3 rescales the inputs of. A mixture of experts keeps its experts as fused 3-D parameters with no such
projection: the whole MoE sub-block is the target.
"""

from __future__ import annotations

from dataclasses import dataclass

# Names that mark a sub-block's output projection when several of its linear layers have the model's width (a
# BERT-sized attention's query, key and value do too).
OUTPUT_NAMES = ("o_proj", "out_proj", "c_proj", "dense", "down_proj", "fc2", "dense_4h_to_h", "w2", "wo", "Wo")


@dataclass(frozen=True)
class SubBlock:
    """One sub-block of a block: its path inside the block, its output projection's path inside the block (None
    for a mixture of experts: the sub-block itself is wrapped), and its other linear layers' paths."""

    path: str
    output: str | None
    inputs: tuple[str, ...]

    @property
    def target(self) -> str:
        return self.output or self.path


def linear_width(module) -> int | None:
    """The output width of a linear layer (nn.Linear, or transformers' Conv1D with its transposed weight)."""
    from torch import nn

    if isinstance(module, nn.Linear):
        return module.out_features
    if type(module).__name__ == "Conv1D":
        return module.nf
    return None


def blocks(model) -> tuple[str, list]:
    """(path, blocks) of the model's stack of blocks: the ModuleList of identical blocks with linear layers, one
    per hidden layer (a list of experts is shorter or longer). A vision-language model's are its language model's:
    its vision tower's stack comes first and may have as many blocks."""
    from torch import nn

    from ftcore.models.vision import part_modules

    layers = model.config.get_text_config().num_hidden_layers
    scope = part_modules(model).get("language_model")
    for name, module in model.named_modules():
        if scope is not None and not name.startswith(f"{scope}."):
            continue
        if (isinstance(module, nn.ModuleList) and len(module) == layers and len({type(m) for m in module}) == 1
                and any(linear_width(m) is not None for m in module[0].modules())):
            return name, list(module)
    raise ValueError(f"{type(model).__name__} has no stack of {layers} blocks with linear layers to place it in; "
                     "name method.target_modules")


def sub_blocks(model) -> list[SubBlock]:
    """The sub-blocks of the first block that write into the residual stream, in order."""
    width = model.config.get_text_config().hidden_size
    _, stack = blocks(model)
    found = []
    for name, child in stack[0].named_children():
        if any(p.dim() == 3 for p in child.parameters()):  # fused experts: no output projection to follow
            found.append(SubBlock(name, None, ()))
            continue
        linears = [(f"{name}.{path}" if path else name, linear_width(m)) for path, m in child.named_modules()
                   if linear_width(m) is not None]
        to_width = [path for path, out in linears if out == width]
        if not to_width:
            continue
        named = [path for path in to_width if path.rsplit(".", 1)[-1] in OUTPUT_NAMES]
        output = (named or to_width)[-1]
        found.append(SubBlock(name, output, tuple(path for path, _ in linears if path != output)))
    return found


def block_targets(model, paths: list[str]) -> list[str]:
    """Full module paths, in every block, of `paths` (paths inside a block)."""
    prefix, stack = blocks(model)
    return [f"{prefix}.{i}.{path}" for i in range(len(stack)) for path in paths]


def residual_outputs(model) -> list[str]:
    """Every block's sub-block outputs (a mixture of experts: the MoE block itself): the bottleneck adapters'
    places."""
    return block_targets(model, [sub.target for sub in sub_blocks(model)])


def ia3_targets(model) -> tuple[list[str], list[str]]:
    """(target_modules, feedforward_modules) for IA3 where PEFT has no list for the architecture: the attention's
    input projections (its keys and values, with the queries where they are separate layers, as PEFT's own lists
    for Qwen2 and Gemma have them; a fused projection whole) rescaled on their output, and each MLP's output
    projection rescaled on its input (the feed-forward activations). A mixture of experts has no such projection:
    only its attention is rescaled."""
    attention, *others = sub_blocks(model)
    feedforward = [sub.output for sub in others if sub.output is not None]
    return block_targets(model, [*attention.inputs, *feedforward]), block_targets(model, feedforward)
