"""ONNX exports of a causal language model (`--kind onnx`, docs/deploy.md): the merged float32 model exported with
torch.onnx's dynamo exporter as one graph, run by ONNX Runtime on the CPU (`OnnxCausalLM`).

The graph carries the key/value cache, as optimum's "with past" exports do: inputs `input_ids`, `attention_mask`
(past and new tokens), `position_ids` and each layer's `past.<i>.key` / `past.<i>.value`; outputs `logits` and
each layer's `present.<i>.key` / `present.<i>.value`, every axis but the heads' dynamic. Generation feeds back the
presents and runs one new token per step. A first call has no past: it is given one zero slot that its attention
mask hides, so that one graph serves both (an empty past axis cannot be exported as dynamic). A family whose cache
torch.export cannot trace gets the graph without it (ids, mask and positions to logits), generating by running the
whole sequence again for each token. The check runs the file beside the float32 model on the test prompts (logits
and top tokens) and times one forward pass of a batch of them in each (`LogitCheck.timings`).
"""

from __future__ import annotations

import json
import logging
import re
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

from ftcore.deploy.fidelity import LogitCheck, compare_logits
from ftcore.errors import UserError

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
INPUTS = ("input_ids", "attention_mask", "position_ids")
PAST, PRESENT = "past", "present"  # past.<layer>.key, present.<layer>.value, ...
TIMED_RUNS = 5  # forward passes per engine; the median is reported


def refusal(folder: Path) -> str | None:
    """Why the model in `folder` has no ONNX export here, in one line; None when it has."""
    config = json.loads((Path(folder) / "config.json").read_text())
    architectures = config.get("architectures") or []
    if not any(name.endswith("ForCausalLM") for name in architectures):
        return (f"{', '.join(architectures) or 'this model'} is not a causal language model; onnx exports those "
                "(logits of the prompt's tokens, and greedy generation with ONNX Runtime)")
    if config.get("num_local_experts") or config.get("num_experts"):
        return (f"{config.get('model_type')} routes tokens to experts, which torch.onnx does not convert here "
                "(measured on Mixtral and Qwen2-MoE); export merged or merged_bf16")
    return None


def positions(attention_mask):
    """Each token's position counted from the first real token (left padding sits at 0), as generate computes it."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def cache_names(prefix: str, layers: int) -> list[str]:
    return [f"{prefix}.{i}.{part}" for i in range(layers) for part in ("key", "value")]


def write_onnx(folder: Path, out: Path) -> None:
    """`out/model.onnx` (beside it the tokenizer and config) from the float32 model in `folder`: with the key/value
    cache, else (a family whose cache torch.export cannot trace, e.g. Falcon's) without it; UserError when neither
    exports (mixture-of-experts routing, for one)."""
    import torch

    from ftcore.models.load import reload_model, reload_processing

    model = reload_model(folder).eval()
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        try:
            export_with_cache(model, out / ONNX_FILE)
        except torch.onnx.OnnxExporterError as cached:
            log.info("%s: no ONNX graph with the key/value cache (%s); exporting one without it",
                     model.config.model_type, first_sentence(cached))
            try:
                export_without_cache(model, out / ONNX_FILE)
            except torch.onnx.OnnxExporterError as plain:
                raise UserError(f"onnx: torch.onnx cannot export model type {model.config.model_type!r} here "
                                f"({first_sentence(plain)}); export merged or merged_bf16") from None
    model.config.save_pretrained(out)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(out)
    reload_processing(folder).save_pretrained(out)


def first_sentence(error: Exception) -> str:
    """The exporter's message up to its first full stop, without its terminal colours."""
    return re.sub(r"\x1b\[[0-9;]*m", "", str(error)).split(". ")[0].strip().removesuffix(".")


def export_with_cache(model, path: Path) -> None:
    import torch
    from transformers import DynamicCache

    layers = model.config.get_text_config().num_hidden_layers

    class WithCache(torch.nn.Module):  # the cache in and out as plain tensors, a pair per layer
        def forward(self, input_ids, attention_mask, position_ids, past):
            cache = DynamicCache(config=model.config)
            for layer in range(layers):
                cache.update(past[2 * layer], past[2 * layer + 1], layer)
            output = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                           past_key_values=cache, use_cache=True)
            return output.logits, *(t for layer in output.past_key_values.layers for t in (layer.keys, layer.values))

    ids = example_ids(model)
    mask = torch.ones((ids.shape[0], 1 + ids.shape[1]), dtype=torch.long)
    past = tuple(empty_past(model_cache_shape(model), ids.shape[0], layers))
    dynamic = torch.export.Dim.DYNAMIC
    step, whole = {0: dynamic, 1: dynamic}, {0: dynamic, 2: dynamic}
    torch.onnx.export(WithCache().eval(), (ids, mask, positions(mask)[:, 1:], past), str(path),
                      input_names=[*INPUTS, *cache_names(PAST, layers)],
                      output_names=["logits", *cache_names(PRESENT, layers)], dynamo=True, external_data=True,
                      verbose=False, dynamic_shapes=(step, step, step, (whole,) * len(past)))


def export_without_cache(model, path: Path) -> None:
    import torch

    class Logits(torch.nn.Module):  # the three inputs in, the logits out
        def forward(self, input_ids, attention_mask, position_ids):
            return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=False).logits

    ids = example_ids(model)
    mask = torch.ones_like(ids)
    dynamic = torch.export.Dim.DYNAMIC
    torch.onnx.export(Logits().eval(), (ids, mask, positions(mask)), str(path), input_names=list(INPUTS),
                      output_names=["logits"], dynamo=True, external_data=True, verbose=False,
                      dynamic_shapes=({0: dynamic, 1: dynamic},) * len(INPUTS))


def example_ids(model):
    import torch

    return torch.full((2, 8), model.config.get_text_config().bos_token_id or 1, dtype=torch.long)


def model_cache_shape(model) -> tuple[int, int]:
    """(key/value heads, head width) of the model's attention layers."""
    config = model.config.get_text_config()
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return heads, getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def empty_past(shape: tuple[int, int], batch: int, layers: int):
    """One zero slot per layer's keys and values: the past of a first call, hidden by its attention mask."""
    import torch

    return [torch.zeros(batch, shape[0], 1, shape[1]) for _ in range(2 * layers)]


class OnnxCausalLM:
    """An ONNX export run by ONNX Runtime, with what ftflow's generation and scoring ask of a model: called on ids
    it returns `.logits`; `generate` continues left-padded prompts greedily, with the key/value cache."""

    def __init__(self, folder: Path):
        import onnxruntime
        import torch
        from transformers import AutoConfig, GenerationConfig

        folder = Path(folder)
        self.session = onnxruntime.InferenceSession(str(folder / ONNX_FILE), providers=["CPUExecutionProvider"])
        self.config = AutoConfig.from_pretrained(folder)
        self.generation_config = (GenerationConfig.from_pretrained(folder)
                                  if (folder / "generation_config.json").is_file() else None)
        self.device = torch.device("cpu")
        past = [i for i in self.session.get_inputs() if i.name.startswith(f"{PAST}.")]
        self.layers = len(past) // 2  # 0: a graph without the cache
        self.cache_shape = (past[0].shape[1], past[0].shape[3]) if past else None  # fixed: heads, head width

    def eval(self) -> OnnxCausalLM:
        return self

    def __call__(self, input_ids, attention_mask=None, **_):
        from transformers.modeling_outputs import CausalLMOutput

        mask = self.first_mask(input_ids, attention_mask)
        logits, _ = self.step(input_ids, mask, empty_past(self.cache_shape, input_ids.shape[0], self.layers))
        return CausalLMOutput(logits=logits)

    def first_mask(self, input_ids, attention_mask):
        """The prompt's attention mask, behind the hidden zero slot of a first call's past in a cached graph."""
        import torch

        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.long()
        return torch.cat([torch.zeros_like(mask[:, :1]), mask], dim=1) if self.layers else mask

    def step(self, input_ids, mask, past):
        """(logits of `input_ids`, the presents) after `past`; `mask` covers the past and the new tokens."""
        import torch

        feed = {"input_ids": input_ids, "attention_mask": mask,
                "position_ids": positions(mask)[:, -input_ids.shape[1]:]}
        feed = {name: value.long().cpu().numpy() for name, value in feed.items()}
        feed |= {name: tensor.numpy() for name, tensor in zip(cache_names(PAST, self.layers), past, strict=True)}
        logits, *present = self.session.run(None, feed)
        return torch.from_numpy(logits), [torch.from_numpy(t) for t in present]

    def generate(self, input_ids, attention_mask=None, max_new_tokens: int = 20, pad_token_id: int | None = None,
                 eos_token_id: int | list[int] | None = None, **_):
        """Greedy continuation, one token per step on the cache (without it, the whole sequence again); a row that
        ended keeps padding."""
        import torch

        stops = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or []))
        pad = pad_token_id if pad_token_id is not None else (int(stops[0]) if len(stops) else 0)
        mask = self.first_mask(input_ids, attention_mask)
        past = empty_past(self.cache_shape, input_ids.shape[0], self.layers)
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
        new = input_ids
        for _ in range(max_new_tokens):
            logits, past = self.step(new, mask, past)
            token = torch.where(done, torch.full_like(done, pad, dtype=torch.long), logits[:, -1].argmax(-1))
            input_ids = torch.cat([input_ids, token[:, None]], dim=1)
            mask = torch.cat([mask, (~done).long()[:, None]], dim=1)
            new = token[:, None] if self.layers else input_ids
            done |= torch.isin(token, stops)
            if bool(done.all()):
                break
        return input_ids


def check_onnx(folder: Path, out: Path, prompts: Sequence[str]) -> LogitCheck:
    """The ONNX export in `out` beside the float32 model in `folder`: logits on each prompt, and one forward pass of
    all of them as a batch timed in each engine."""
    from ftcore.models.load import load_trained, reload_tokenizer

    reference, tokenizer = load_trained(folder)
    exported = OnnxCausalLM(out)
    timings = {"onnx_forward_s": forward_seconds(exported, tokenizer, prompts),
               "pytorch_forward_s": forward_seconds(reference, tokenizer, prompts)}
    return compare_logits(reference, tokenizer, exported, reload_tokenizer(out), prompts, "run by ONNX Runtime",
                          timings)


def forward_seconds(model, tokenizer, prompts: Sequence[str]) -> float:
    """The median time of one forward pass over the prompts as one left-padded batch (after one untimed pass)."""
    import torch

    tokenizer.padding_side = "left"
    batch = tokenizer(list(prompts), return_tensors="pt", padding=True)
    seconds = []
    with torch.no_grad():
        for _ in range(TIMED_RUNS + 1):
            started = time.perf_counter()
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            seconds.append(time.perf_counter() - started)
    return statistics.median(seconds[1:])
