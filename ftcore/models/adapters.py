"""Bottleneck (Houlsby-style) adapters as a PEFT method.

After each targeted sub-block (by default the attention output and the MLP output of every decoder layer) the hidden
state h becomes h + up(dropout(act(down(h)))). PEFT has no such method, so it is registered with PEFT's own
`register_peft_method`: `get_peft_model`, `save_pretrained`, `PeftModel.from_pretrained` and
`print_trainable_parameters` then treat it like LoRA. Importing this module registers it; anything that builds or
loads such an adapter must import it first (ftcore.models.peft_methods does).

The non-linearity sits between the two projections, so the adapter cannot be folded into the base weights:
`merge_and_unload` raises instead of silently returning the base.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peft import PeftConfig
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils import PeftType, register_peft_method
from torch import nn

METHOD = "bottleneck"
NOT_MERGEABLE = ("bottleneck adapters cannot be merged into the base weights (a non-linearity sits between their "
                 "projections): keep the base and the adapter and load them with PeftModel.from_pretrained")
NON_LINEARITIES: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
def _add_peft_type(name: str) -> None:
    """Add a member to PEFT's closed PeftType enum, as Enum itself creates members.

    `register_peft_method` accepts only names PeftType already has (PEFT's in-tree methods add theirs in its source)
    and Python 3.11 has no public API to extend an Enum.
    """
    if name in PeftType.__members__:
        return
    member = str.__new__(PeftType, name)
    member._name_ = member._value_ = name
    type.__setattr__(PeftType, name, member)
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)


_add_peft_type(METHOD.upper())


@dataclass
class BottleneckConfig(PeftConfig):
    """PEFT config of a bottleneck adapter (saved as adapter_config.json)."""

    bottleneck_size: int = field(default=16, metadata={"help": "width of the down-projection"})
    non_linearity: str = field(default="relu", metadata={"help": f"one of {sorted(NON_LINEARITIES)}"})
    adapter_dropout: float = field(default=0.0, metadata={"help": "dropout on the bottleneck activations"})
    target_modules: list[str] | str | None = field(
        default=None, metadata={"help": "modules followed by an adapter (names or a regex); default: each block's "
                                        "attention and MLP output (default_targets)"})
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "modules never adapted"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType[METHOD.upper()]
        if self.non_linearity not in NON_LINEARITIES:
            raise ValueError(f"non_linearity must be one of {sorted(NON_LINEARITIES)}, got {self.non_linearity!r}")
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)


class BottleneckLayer(nn.Module, BaseTunerLayer):
    """Wraps a sub-block and adds the bottleneck adapter to its output (the first element when it returns a
    tuple, as attention blocks do)."""

    adapter_layer_names = ("bottleneck_down", "bottleneck_up")
    other_param_names = ("bottleneck_act",)

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: BottleneckConfig, width: int) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.width = width
        self.bottleneck_down = nn.ModuleDict()
        self.bottleneck_up = nn.ModuleDict()
        self.bottleneck_act = nn.ModuleDict()  # non-linearity and dropout: no weights
        self.merged_adapters = []
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name: str, config: BottleneckConfig) -> None:
        self.bottleneck_down[adapter_name] = nn.Linear(self.width, config.bottleneck_size)
        up = nn.Linear(config.bottleneck_size, self.width)
        # Zero up-projection: the adapter adds exactly nothing until it trains, so the untrained model is the base
        # (the near-identity start Houlsby et al. found necessary); the down-projection keeps its random init so
        # the up-projection gets a gradient from the first step.
        nn.init.zeros_(up.weight)
        nn.init.zeros_(up.bias)
        self.bottleneck_up[adapter_name] = up
        self.bottleneck_act[adapter_name] = nn.Sequential(NON_LINEARITIES[config.non_linearity](),
                                                          nn.Dropout(config.adapter_dropout))
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def forward(self, *args, **kwargs):
        output = self.base_layer(*args, **kwargs)
        if self.disable_adapters:
            return output
        hidden = output[0] if isinstance(output, tuple) else output
        for name in self.active_adapters:
            if name in self.bottleneck_down:
                down = self.bottleneck_down[name]
                update = self.bottleneck_up[name](self.bottleneck_act[name](down(hidden.to(down.weight.dtype))))
                hidden = hidden + update.to(hidden.dtype)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise ValueError(NOT_MERGEABLE)

    def __repr__(self) -> str:
        return "bottleneck." + super().__repr__()


class BottleneckModel(BaseTuner):
    """Puts a BottleneckLayer around every targeted module."""

    prefix = f"{METHOD}_"
    tuner_layer_cls = BottleneckLayer

    def _create_and_replace(self, peft_config: BottleneckConfig, adapter_name: str, target: nn.Module,
                            target_name: str, parent: nn.Module, current_key: str) -> None:
        if isinstance(target, BottleneckLayer):
            target.update_layer(adapter_name, peft_config)
            return
        new_module = BottleneckLayer(target, adapter_name, peft_config, self._output_width(target))
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # an added, inactive adapter is not trained
        self._replace_module(parent, target_name, new_module, target)

    def _output_width(self, target: nn.Module) -> int:
        # A Linear's output is its out_features; any other block (an MoE layer, a whole attention module) returns
        # the residual stream, whose width is the model's hidden size.
        return target.out_features if isinstance(target, nn.Linear) else self.model.config.hidden_size

    def _check_merge_allowed(self) -> None:
        raise ValueError(NOT_MERGEABLE)


register_peft_method(name=METHOD, config_cls=BottleneckConfig, model_cls=BottleneckModel)
