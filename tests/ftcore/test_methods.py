"""Every fine-tuning method on a tiny scratch Llama: it trains only what it should, the loss falls, and the saved
adapter loads back to the same model; and a method that does not fit the model is a user error. The method
section's validation at recipe load: test_method_validation.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from pydantic import TypeAdapter
from safetensors.torch import load_file

from ftcore.errors import UserError
from ftcore.models.config import METHOD_NAMES, MethodConfig, ModelConfig, ScratchModelConfig
from ftcore.models.init import InitJob, init_stage
from ftcore.models.load import load_tokenizer
from ftcore.models.peft_methods import (
    apply_method,
    attach_adapter,
    can_merge,
    export_model,
    load_base,
    load_exported,
    load_trainable,
    merged_model,
    parameter_counts,
    read_method_spec,
)
from ftcore.models.scratch import build_model, train_tokenizer
from ftcore.outputs import DatasetOutput

ABBREVIATIONS = {
    "MI": "myocardial infarction", "BP": "blood pressure", "HR": "heart rate", "COPD": "chronic obstructive "
    "pulmonary disease", "CHF": "congestive heart failure", "DM": "diabetes mellitus", "CKD": "chronic kidney "
    "disease", "UTI": "urinary tract infection", "GI": "gastrointestinal", "ECG": "electrocardiogram",
    "CT": "computed tomography", "ICU": "intensive care unit", "PRN": "as needed", "BID": "twice a day",
}
CORPUS = [line for abbr, meaning in ABBREVIATIONS.items()
          for line in (f"Question: what does {abbr} mean?\nAnswer: {meaning}", f"{abbr} stands for {meaning}.",
                       f"The note says {abbr}, that is {meaning}.")]
# Method -> options for the test and the learning rate its steps need (prompt learning on a random base moves
# slowly: more virtual tokens and a larger rate). Each case's loss falls by 11% or more (measured; asserted: 8%).
CASES: dict[str, tuple[dict, float]] = {
    "full": ({}, 1e-2),
    "lora": ({}, 3e-2),
    "qlora": ({}, 3e-2),
    "dora": ({}, 3e-2),
    "ia3": ({}, 1e-1),
    "loha": ({}, 3e-2),
    "lokr": ({}, 1e-1),
    "prefix": ({"num_virtual_tokens": 8}, 1e-1),
    "prompt": ({"num_virtual_tokens": 16, "init": "text", "init_text": "clinical abbreviation"}, 1e-1),
    "p_tuning": ({"num_virtual_tokens": 8, "encoder_hidden_size": 32}, 1e-2),
    "adapter": ({"bottleneck_size": 8}, 3e-2),
}
STEPS = 20


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: a second thread only adds synchronisation, and its spin-waiting made this file 8x
    slower (192 s against 25 s) while other work held the second core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def method(name: str, **options) -> MethodConfig:
    return TypeAdapter(MethodConfig).validate_python({"name": name, **options})


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, object]:
    """A tiny scratch Llama saved as a folder (qlora loads it quantised from there), and its tokenizer."""
    tokenizer = train_tokenizer(CORPUS, vocab_size=300)
    cfg = ScratchModelConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=2, max_position_embeddings=128)
    path = tmp_path_factory.mktemp("base")
    build_model(cfg, tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, tokenizer


@pytest.fixture(scope="module")
def batch(base) -> dict[str, torch.Tensor]:
    _, tokenizer = base
    enc = tokenizer(CORPUS[:16], padding=True, return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def train(model, batch: dict[str, torch.Tensor], lr: float, steps: int = STEPS,
          evaluate_at: int | None = None) -> list[float]:
    """A plain loop on one fixed batch: deterministic, and the loss of a model that learns must fall on it.
    `evaluate_at`: a forward pass without gradients before that step, as an evaluation in between does."""
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    losses = []
    for step in range(steps):
        if step == evaluate_at:
            logits(model, batch)
        model.train()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@pytest.mark.parametrize("name", list(CASES))
def test_method_trains_its_own_weights_only_and_round_trips(name, base, batch, tmp_path):
    path, tokenizer = base
    options, lr = CASES[name]
    cfg = method(name, **options)
    model = apply_method(load_base(path, cfg), cfg, tokenizer)
    trainable, total = parameter_counts(model)
    assert 0 < trainable <= total and (trainable == total) == (name == "full")
    before = snapshot(model)
    trained_names = {n for n, p in model.named_parameters() if p.requires_grad}

    losses = train(model, batch, lr)

    after = snapshot(model)
    assert [n for n in trained_names if after[n].equal(before[n])] == []  # every trainable tensor moved
    assert [n for n in before.keys() - trained_names if not after[n].equal(before[n])] == []  # the rest did not
    assert sum(losses[-3:]) / 3 < 0.92 * losses[0], losses

    expected = logits(model, batch)
    model.save_pretrained(tmp_path / "saved")
    reloaded = load_base(tmp_path / "saved" if name == "full" else path, cfg)
    if name != "full":
        reloaded = attach_adapter(reloaded, tmp_path / "saved", trainable=False)
    assert torch.equal(logits(reloaded, batch), expected)


def test_qlora_trains_lora_on_a_4bit_nf4_base_with_double_quantisation(base):
    import bitsandbytes as bnb

    path, _ = base
    cfg = method("qlora")
    model = apply_method(load_base(path, cfg), cfg)
    linears = [m for n, m in model.named_modules() if n.endswith("base_layer")]
    assert len(linears) == 14 and all(isinstance(m, bnb.nn.Linear4bit) for m in linears)  # 7 per layer, not lm_head
    assert {m.weight.quant_state.quant_type for m in linears} == {"nf4"}
    assert all(m.weight.quant_state.nested for m in linears)  # double quantisation
    assert all(p.dtype == torch.uint8 and not p.requires_grad for m in linears for p in m.parameters())
    # Packed weights count as the values they hold: the same total as the full-precision model with LoRA.
    lora = apply_method(load_base(path, method("lora")), method("lora"))
    assert parameter_counts(model) == parameter_counts(lora)


def test_qlora_merges_into_the_full_precision_base(base, batch, tmp_path):
    import bitsandbytes as bnb
    from peft.tuners.tuners_utils import BaseTunerLayer

    path, _ = base
    cfg = method("qlora")
    model = apply_method(load_base(path, cfg), cfg)
    train(model, batch, 3e-2)
    model.save_pretrained(tmp_path / "adapter")
    merged = merged_model(path, tmp_path / "adapter")
    assert not any(isinstance(m, bnb.nn.Linear4bit | BaseTunerLayer) for m in merged.modules())
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    # The merge is the fp32 base with the adapter applied...
    unmerged = attach_adapter(load_base(path, method("full")), tmp_path / "adapter", trainable=False)
    torch.testing.assert_close(logits(merged, batch), logits(unmerged, batch), rtol=1e-4, atol=1e-4)
    # ...and what was learnt on the 4-bit base carries over to it despite the quantisation error.
    with torch.no_grad():
        base_loss = load_base(path, method("full"))(**batch).loss
        assert merged(**batch).loss < 0.6 * base_loss


def test_untrained_bottleneck_adapter_leaves_the_base_output_unchanged(base, batch):
    path, tokenizer = base
    expected = logits(load_base(path, method("full")), batch)
    model = apply_method(load_base(path, method("adapter")), method("adapter"), tokenizer)
    targets = [n for n, m in model.named_modules() if type(m).__name__ == "BottleneckLayer"]
    assert sorted({n.rsplit(".", 1)[-1] for n in targets}) == ["down_proj", "o_proj"] and len(targets) == 4
    assert torch.equal(logits(model, batch), expected)


def test_bottleneck_adapter_wraps_the_whole_moe_block_on_mixtral(base, batch):
    from transformers import MixtralConfig, MixtralForCausalLM

    _, tokenizer = base
    torch.manual_seed(0)
    model = MixtralForCausalLM(MixtralConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                             num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                             num_local_experts=2, pad_token_id=tokenizer.pad_token_id,
                                             initializer_range=0.1))  # as the scratch models (architecture.md)
    expected = logits(model, batch)
    model = apply_method(model, method("adapter"))
    targets = [n.removeprefix("base_model.model.model.") for n, m in model.named_modules()
               if type(m).__name__ == "BottleneckLayer"]
    assert targets == ["layers.0.self_attn.o_proj", "layers.0.mlp", "layers.1.self_attn.o_proj", "layers.1.mlp"]
    assert torch.equal(logits(model, batch), expected)
    losses = train(model, batch, 3e-2)
    assert sum(losses[-3:]) / 3 < 0.92 * losses[0]


@pytest.mark.parametrize("name", ["adapter", "prefix"])
def test_unmergeable_methods_export_base_and_adapter_side_by_side(name, base, batch, tmp_path):
    path, tokenizer = base
    options, lr = CASES[name]
    cfg = method(name, **options)
    model = apply_method(load_base(path, cfg), cfg, tokenizer)
    train(model, batch, lr)
    model.save_pretrained(tmp_path / "adapter")
    assert not can_merge(cfg)
    if name == "adapter":
        with pytest.raises(ValueError, match="cannot be merged"):
            model.merge_and_unload()
    export_model(cfg, path, tmp_path / "adapter", tmp_path / "model")
    assert (tmp_path / "model" / "adapter" / "adapter_config.json").exists()
    assert torch.equal(logits(load_exported(tmp_path / "model"), batch), logits(model, batch))


def test_qlora_training_is_unaffected_by_an_evaluation_in_between(base, batch):
    path, _ = base

    def losses(evaluate_at: int | None) -> list[float]:
        # bitsandbytes' CPU repacking would start at the evaluation (see load_base)
        return train(apply_method(load_base(path, method("qlora")), method("qlora")), batch, 3e-2, 12, evaluate_at)

    assert losses(evaluate_at=6) == losses(evaluate_at=None)


def test_qlora_evaluates_on_widths_the_cpu_4bit_packing_rejects(tmp_path, base):
    _, tokenizer = base
    cfg = ScratchModelConfig(vocab_size=300, hidden_size=96, intermediate_size=192, num_hidden_layers=1,
                             num_attention_heads=2)
    build_model(cfg, tokenizer).save_pretrained(tmp_path)
    model = apply_method(load_base(tmp_path, method("qlora")), method("qlora"))
    ids = tokenizer(CORPUS[:2], padding=True, return_tensors="pt")["input_ids"]
    assert logits(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}).isfinite().all()


# ---------------------------------------------------------------------------------------------------------------
# Through the pipeline: the init stage's output, what the train stage loads, TRL's trainer


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> DatasetOutput:
    rows = pd.DataFrame({"prompt": [f"Question: what does {a} mean?\nAnswer:" for a in ABBREVIATIONS],
                         "completion": [f" {m}" for m in ABBREVIATIONS.values()]})
    path = tmp_path_factory.mktemp("dataset") / "train.parquet"
    rows.to_parquet(path)
    return DatasetOutput(path=path.parent, content_hash="test", splits={"train": path}, rows=len(rows))


TINY_MODEL = ModelConfig(scratch=ScratchModelConfig(vocab_size=300, hidden_size=64, intermediate_size=128,
                                                    num_hidden_layers=2, num_attention_heads=2))


def test_qlora_init_keeps_the_base_in_full_precision_and_records_the_method(dataset, tmp_path):
    import bitsandbytes as bnb

    out = init_stage(InitJob(model=TINY_MODEL, method=method("qlora"), dataset=dataset), tmp_path / "init")
    assert {t.dtype for t in load_file(out.base_path / "model.safetensors").values()} == {torch.float32}
    assert read_method_spec(out.path) == method("qlora")
    assert out.adapter_path is not None and 0 < out.metrics["trainable_fraction"] < 0.5
    model = load_trainable(out.base_path, out.adapter_path, read_method_spec(out.path), None)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    assert parameter_counts(model) == (out.metrics["trainable_params"], out.metrics["total_params"])


@pytest.mark.parametrize("name", ["prefix", "p_tuning", "prompt"])
def test_prompt_learning_is_rebuilt_for_training_as_the_init_stage_saved_it(name, dataset, tmp_path):
    options = {**CASES[name][0], "prefix_projection": True} if name == "prefix" else CASES[name][0]
    out = init_stage(InitJob(model=TINY_MODEL, method=method(name, **options), dataset=dataset), tmp_path / "init")
    tokenizer = load_tokenizer(out.base_path)
    model = load_trainable(out.base_path, out.adapter_path, read_method_spec(out.path), tokenizer)
    encoder = dict(model.prompt_encoder.default.named_parameters())
    assert encoder and all(p.requires_grad for p in encoder.values())
    assert len(encoder) > 1 or name == "prompt"  # the encoder (MLP) trains, not only its saved output
    model.save_pretrained(tmp_path / "rebuilt")
    assert load_file(tmp_path / "rebuilt" / "adapter_model.safetensors")["prompt_embeddings"].equal(
        load_file(out.adapter_path / "adapter_model.safetensors")["prompt_embeddings"])


@pytest.mark.parametrize("name", list(CASES))
def test_every_method_trains_through_trl_sft_trainer(name, base, dataset, tmp_path):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    path, tokenizer = base
    options, lr = CASES[name]
    cfg = method(name, **options)
    model = apply_method(load_base(path, cfg), cfg, tokenizer)
    before = snapshot(model)
    args = SFTConfig(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=8, learning_rate=lr,
                     logging_steps=1, report_to="none", use_cpu=True, bf16=False, gradient_checkpointing=False,
                     save_strategy="no", disable_tqdm=True, max_length=64, completion_only_loss=True)
    rows = Dataset.from_pandas(pd.read_parquet(dataset.splits["train"]), preserve_index=False)
    trainer = SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)
    assert trainer.train().global_step == 3
    changed = {n for n, p in trainer.model.named_parameters() if not p.detach().equal(before[n])}
    assert changed == {n for n, p in trainer.model.named_parameters() if p.requires_grad} != set()


@pytest.mark.parametrize("name", [name for name in METHOD_NAMES if name != "full"])  # a new method needs a CASES entry
def test_can_merge_says_yes_exactly_where_the_merged_model_answers_as_the_adapter_does(name, base, batch, tmp_path):
    """Export folds the adapter into the base weights where `can_merge` says so, and writes it beside the base
    elsewhere: it must say so exactly for the methods whose merge works and keeps the trained model's output."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    path, tokenizer = base
    options, lr = CASES[name]
    cfg = method(name, **options)
    model = apply_method(load_base(path, cfg), cfg, tokenizer)
    train(model, batch, lr, steps=3)
    model.save_pretrained(tmp_path / "adapter")
    unmerged = attach_adapter(load_base(path, method("full")), tmp_path / "adapter", trainable=False)
    try:
        merged = merged_model(path, tmp_path / "adapter")
    except (AttributeError, ValueError):  # prompt learning has no merge; a bottleneck adapter refuses one
        merges = False
    else:
        merges = not any(isinstance(m, BaseTunerLayer) for m in merged.modules()) and torch.allclose(
            logits(merged, batch), logits(unmerged, batch), rtol=1e-4, atol=1e-4)
    assert can_merge(cfg) == merges


# ---------------------------------------------------------------------------------------------------------------
# A method on a model it does not fit, the optimizer it gets, its adapter saved in another process


def test_adapter_finds_its_places_on_an_architecture_it_has_no_list_for(base):
    """No list of module names per family: the blocks' attention and MLP outputs are found in the modules."""
    path, _ = base
    model = load_base(path, method("full"))
    model.config.model_type = "unknown-arch"
    wrapped = apply_method(model, method("adapter"))
    adapted = sorted({name.split(".")[-1] for name, module in wrapped.named_modules()
                      if type(module).__name__ == "BottleneckLayer"})
    assert adapted == ["down_proj", "o_proj"]


def test_adapter_on_a_model_without_a_stack_of_blocks_asks_for_target_modules(base):
    path, _ = base
    model = load_base(path, method("full"))
    model.config.num_hidden_layers += 1  # no list of that many blocks
    with pytest.raises(UserError, match=r"^method: adapter does not fit this model: .* name method\.target_modules"):
        apply_method(model, method("adapter"))


def test_target_modules_that_match_nothing_are_a_user_error(base):
    path, _ = base
    with pytest.raises(UserError, match=r"^method: lora does not fit this model: Target modules"):
        apply_method(load_base(path, method("full")), method("lora", target_modules=["no_such_proj"]))


def test_qlora_gets_the_paged_8bit_optimizer_only_on_a_gpu(base, monkeypatch):
    from ftcore.training.train import optimizer_name

    path, _ = base
    qlora = apply_method(load_base(path, method("qlora")), method("qlora"))
    lora = apply_method(load_base(path, method("lora")), method("lora"))
    assert optimizer_name(qlora) == optimizer_name(lora) == "adamw_torch"  # paged optimizers need CUDA
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert optimizer_name(qlora) == "paged_adamw_8bit" and optimizer_name(lora) == "adamw_torch"


SAVE_ADAPTER = """
import sys
from pathlib import Path
from pydantic import TypeAdapter
from ftcore.models.config import MethodConfig
from ftcore.models.load import load_model, load_tokenizer
from ftcore.models.peft_methods import apply_method, save_adapter
base, out = map(Path, sys.argv[1:])
modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
cfg = TypeAdapter(MethodConfig).validate_python({"name": "lora", "target_modules": modules})
save_adapter(apply_method(load_model(base), cfg, load_tokenizer(base)), out)
"""


def test_an_adapter_is_saved_the_same_whatever_the_process_hash_seed(base, tmp_path):
    """PEFT writes target_modules in set order, which PYTHONHASHSEED changes: the same adapter must not get another
    content hash in another process (the init and train stages' hashes name their folders and checkpoints)."""
    import os
    import subprocess

    configs = set()
    for seed in ("1", "2", "3"):
        out = tmp_path / seed
        subprocess.run([sys.executable, "-c", SAVE_ADAPTER, str(base[0]), str(out)], check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed}, capture_output=True)
        configs.add((out / "adapter_config.json").read_bytes())
    assert len(configs) == 1
