"""ONNX exports of a causal language model (`--kind onnx`, docs/deploy.md): the merged float32 model exported with
torch.onnx's dynamo exporter as one graph from token ids, attention mask and positions to logits, with dynamic batch
and length, and run by ONNX Runtime on the CPU (`OnnxCausalLM`).

The graph has no key/value cache: generation runs the whole sequence again for each new token, which is what
ONNX Runtime's plain session can do without the cache's own inputs and outputs per layer. The check runs the file
beside the float32 model on the test prompts (logits and top tokens) and times one forward pass of a batch of them
in each (`LogitCheck.timings`).
"""

from __future__ import annotations

import json
import statistics
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from ftcore.deploy.fidelity import LogitCheck, compare_logits

ONNX_FILE = "model.onnx"
INPUTS = ("input_ids", "attention_mask", "position_ids")
TIMED_RUNS = 5  # forward passes per engine; the median is reported


def refusal(folder: Path) -> str | None:
    """Why the model in `folder` has no ONNX export here, in one line; None when it has."""
    architectures = json.loads((Path(folder) / "config.json").read_text()).get("architectures") or []
    if not any(name.endswith("ForCausalLM") for name in architectures):
        return (f"{', '.join(architectures) or 'this model'} is not a causal language model; onnx exports those "
                "(logits of the prompt's tokens, and greedy generation with ONNX Runtime)")
    return None


def positions(attention_mask):
    """Each token's position counted from the first real token (left padding sits at 0), as generate computes it."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def write_onnx(folder: Path, out: Path) -> None:
    """`out/model.onnx` (beside it the tokenizer and config) from the float32 model in `folder`."""
    import torch

    from ftcore.models.load import reload_model, reload_processing

    model = reload_model(folder).eval()
    model.config.use_cache = False

    class Logits(torch.nn.Module):  # the three inputs in, the logits out: no cache to carry
        def forward(self, input_ids, attention_mask, position_ids):
            return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=False).logits

    ids = torch.full((2, 8), model.config.get_text_config().bos_token_id or 1, dtype=torch.long)
    mask = torch.ones_like(ids)
    batch, length = torch.export.Dim("batch", min=1), torch.export.Dim("length", min=1)
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # The three inputs share both axes, which the exporter names once and says so for each of the others.
        warnings.filterwarnings("ignore", message=".*will not be used, since it shares the same shape constraints")
        torch.onnx.export(Logits().eval(), (ids, mask, positions(mask)), str(out / ONNX_FILE), input_names=list(INPUTS),
                          output_names=["logits"], dynamo=True, external_data=True, verbose=False,
                          dynamic_shapes=({0: batch, 1: length},) * len(INPUTS))
    model.config.save_pretrained(out)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(out)
    reload_processing(folder).save_pretrained(out)


class OnnxCausalLM:
    """An ONNX export run by ONNX Runtime, with what ftflow's generation and scoring ask of a model: called on ids
    it returns `.logits`; `generate` continues left-padded prompts greedily."""

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

    def eval(self) -> OnnxCausalLM:
        return self

    def __call__(self, input_ids, attention_mask=None, **_):
        import torch
        from transformers.modeling_outputs import CausalLMOutput

        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        feed = {"input_ids": input_ids, "attention_mask": mask, "position_ids": positions(mask)}
        logits = self.session.run(["logits"], {k: v.long().cpu().numpy() for k, v in feed.items()})[0]
        return CausalLMOutput(logits=torch.from_numpy(logits))

    def generate(self, input_ids, attention_mask=None, max_new_tokens: int = 20, pad_token_id: int | None = None,
                 eos_token_id: int | list[int] | None = None, **_):
        """Greedy continuation, the whole sequence run again for each token; a row that ended keeps padding."""
        import torch

        stops = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or []))
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        pad = pad_token_id if pad_token_id is not None else (int(stops[0]) if len(stops) else 0)
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
        for _ in range(max_new_tokens):
            token = self(input_ids, mask).logits[:, -1].argmax(-1)
            token = torch.where(done, torch.full_like(token, pad), token)
            input_ids = torch.cat([input_ids, token[:, None]], dim=1)
            mask = torch.cat([mask, (~done).long()[:, None]], dim=1)
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
