"""The method advisor: exact parameter counts, memory estimates against measured peaks, data statistics from a
cleaned split, and the recommendation rules."""

import json

import pandas as pd
import pytest

from ftcore.errors import UserError
from ftcore.models.config import ModelConfig, ScratchModelConfig
from ftcore.planning.advisor import FEW_SHOT_MAX_ROWS, FULL_MIN_ROWS, MethodEstimate, Variant, needs, recommend
from ftcore.planning.data import data_stats
from ftcore.planning.estimate import Memory, Setup, activation_bytes, training_flops, training_memory
from ftcore.planning.hardware import detect_hardware
from ftcore.planning.measure import TEST_PROBES, estimate, measure_peak
from ftcore.planning.plan import make_plan
from ftcore.planning.shape import (
    VocabOnly,
    build_meta_model,
    count_params,
    lora_config,
    lora_trainable_analytic,
    method_trainable,
    model_shape,
    peft_trainable,
)
from ftcore.recipe import load_recipe
from tests.conftest import DEMO_RECIPE, TINY_OVERRIDES
from tests.ftcore.pipeline_fixtures import prepare

TINY = ScratchModelConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2)


def _real_model(cfg: ModelConfig):
    from ftcore.models.scratch import build_model

    return build_model(cfg.scratch, VocabOnly(cfg.scratch.vocab_size))


@pytest.mark.parametrize("architecture", ["llama", "mixtral"])
@pytest.mark.parametrize("targets", ["all-linear", ["q_proj", "v_proj"]])
def test_meta_counts_equal_an_instantiated_model_for_full_and_lora(architecture, targets):
    from peft import get_peft_model

    cfg = ModelConfig(scratch=TINY.model_copy(update={"architecture": architecture}))
    real = _real_model(cfg)
    assert model_shape(cfg).total_params == count_params(real)[1]
    lora_real = count_params(get_peft_model(real, lora_config(4, targets)))[0]
    assert peft_trainable(cfg, lora_config(4, targets)) == lora_real
    if architecture == "llama":  # the analytic fallback knows linear layers, not PEFT's wrappers of fused experts
        assert lora_trainable_analytic(build_meta_model(cfg), 4, targets) == lora_real


def test_pretrained_folder_is_read_from_its_config_with_its_dtype(tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    real = LlamaForCausalLM(config).to(torch.bfloat16)
    real.save_pretrained(tmp_path)
    shape = model_shape(ModelConfig(source="pretrained", name_or_path=str(tmp_path)))
    assert shape.total_params == count_params(real)[1]  # the tied output head counts once
    assert (shape.dtype, shape.bytes_per_param, shape.num_kv_heads) == ("bfloat16", 2, 2)
    with pytest.raises(UserError, match=r"model\.name_or_path: no such folder"):
        model_shape(ModelConfig(source="pretrained", name_or_path=str(tmp_path / "missing")))


@pytest.mark.parametrize("method", ["method.r=4", "method={name: full}"])
def test_plan_counts_what_the_init_stage_counts(tmp_path, method):
    prepared = prepare(tmp_path, method)
    metrics = prepared.base.metrics
    trainable, counted = method_trainable(prepared.recipe.model, prepared.recipe.method)
    assert trainable == metrics["trainable_params"] and counted.startswith("exact")
    # The planner builds the scratch model at model.scratch.vocab_size; init at the size its tokenizer reached
    reached = prepared.recipe.model.scratch.model_copy(update={"vocab_size": int(metrics["vocab_size"])})
    base_total = model_shape(ModelConfig(scratch=reached)).total_params
    assert base_total == metrics["total_params"] - (trainable if "r=" in method else 0)


def test_a_method_that_needs_real_weights_is_counted_by_formula():
    # Prompt tuning initialised from text needs a tokenizer to embed the text: apply_method fails on a bare meta model
    recipe = load_recipe(DEMO_RECIPE, ["method={name: prompt, num_virtual_tokens: 7, init: text, init_text: hi}"])
    trainable, counted = method_trainable(recipe.model, recipe.method)
    assert counted.startswith("analytic") and trainable == 7 * recipe.model.scratch.hidden_size


def test_estimates_are_within_30_percent_of_measured_peak_memory():
    """A scratch Llama of 5.3 M parameters, 2 steps of AdamW at batch 4 x 128 tokens in a fresh process: full
    fine-tuning and LoRA. ACTIVATION_FACTOR was fitted on other shapes (measure.CALIBRATION_PROBES)."""
    for probe in TEST_PROBES:
        measured = measure_peak(probe)
        estimated = estimate(probe)
        cfg = probe.model_config()
        trainable = model_shape(cfg).total_params if probe.method == "full" else \
            peft_trainable(cfg, lora_config(probe.lora_r, "all-linear"))
        assert measured.trainable_params == trainable
        error = abs(estimated.peak - measured.peak_bytes) / measured.peak_bytes
        assert error <= 0.30, f"{probe.method}: estimated {estimated.peak / 2**20:.1f} MiB, measured " \
                              f"{measured.peak_bytes / 2**20:.1f} MiB"


def test_memory_terms_follow_the_method():
    shape = model_shape(ModelConfig(scratch=TINY))
    setup = Setup(batch_size=4, seq_len=64, value_bytes=4)
    full = training_memory("full", shape, shape.total_params, setup)
    lora = training_memory("adapter", shape, 1000, setup)
    qlora = training_memory("qlora", shape, 1000, setup)
    assert full.weights == full.gradients == shape.total_params * 4 and full.optimizer == 2 * full.weights
    assert lora.gradients == 4000 and lora.optimizer == 8000 and lora.activations == full.activations
    assert qlora.weights < lora.weights
    checkpointed = activation_bytes(shape, Setup(4, 64, 4, gradient_checkpointing=True))
    assert checkpointed < full.activations
    assert full.peak == full.weights + full.optimizer + max(full.gradients, full.activations)
    # Full fine-tuning: 3 forward passes of 2 FLOPs per matmul weight (6 N); adapters: 2 passes + their own 6
    tokens = 1000
    forward = 2 * (shape.total_params - shape.embedding_params) + 2 * shape.num_layers * 10 * shape.hidden_size
    assert training_flops("full", shape, shape.total_params, tokens, 10) == 3 * forward * tokens
    assert training_flops("adapter", shape, 500, tokens, 10) == (2 * forward + 6 * 500) * tokens


def _write_run(home, run_id, recipe_hash, recipe_path, frame):
    folder = home / "artifacts" / "clean_balance" / run_id
    folder.mkdir(parents=True)
    frame.to_parquet(folder / "train.parquet")
    stage = {"status": "completed", "artifacts": {"dataset": str(folder / "dataset.parquet")}}
    summary = {"run_id": run_id, "recipe_hash": recipe_hash, "recipe_path": str(recipe_path),
               "stages": {"clean_balance": stage}}
    (home / "runs" / run_id).mkdir(parents=True)
    (home / "runs" / run_id / "summary.json").write_text(json.dumps(summary))


def test_data_comes_from_the_cleaned_split_of_this_recipe_else_from_the_sources(ftflow_home, tmp_path):
    from ftcore.models.scratch import train_tokenizer

    recipe = load_recipe(DEMO_RECIPE, ["train.max_length=16"])
    from_sources = data_stats(recipe, DEMO_RECIPE)
    assert from_sources.tokens_per_row == from_sources.seq_len == 16 and "no cleaned train split" in \
        from_sources.source
    assert 200 < from_sources.rows_train < 364  # 364 demo rows x the train share (0.8)
    mine = pd.DataFrame({"prompt": ["Question: What is BP?\nAnswer:"] * 30, "completion": [" blood pressure"] * 30})
    _write_run(ftflow_home, "other", "another-hash", tmp_path / "other.yaml", mine.head(5))
    _write_run(ftflow_home, "mine", recipe.content_hash(), DEMO_RECIPE, mine)
    _write_run(ftflow_home, "edited", "before-an-edit", DEMO_RECIPE, mine.head(10))  # newer, same file only
    stats = data_stats(recipe, DEMO_RECIPE)
    texts = (mine["prompt"] + mine["completion"]).tolist()
    tokenizer = train_tokenizer(texts, 512)  # as init trains it
    expected = min(len(tokenizer(texts[0])["input_ids"]) + 1, 16)
    assert (stats.rows_train, stats.tokens_per_row, stats.seq_len) == (30, expected, expected)
    assert "run mine (this recipe)" in stats.source
    assert stats.vocab_size == len(tokenizer) < 512  # one repeated row: the vocabulary stops short of 512


def test_hardware_reports_this_machine():
    hardware = detect_hardware()
    assert hardware.cpu_cores >= 1 and hardware.ram_bytes >= hardware.ram_available_bytes > 0
    assert hardware.memory_bytes == (hardware.gpus[0].memory_bytes if hardware.gpus else hardware.ram_bytes)


# ---------------------------------------------------------------------------------------------------------------
# Recommendations


def _estimates(needs: dict[str, float], budget: float) -> dict[str, MethodEstimate]:
    memory = Memory(weights=1, gradients=0, optimizer=0, activations=0)
    return {name: MethodEstimate(name, "adapter", 1, "exact", memory, None, gb * 1e9, gb * 1e9 <= budget)
            for name, gb in needs.items()}


NEEDS = {"full": 60.0, "lora": 20.0, "qlora": 8.0, "prompt": 18.0, "few_shot": 5.0}


@pytest.mark.parametrize(("budget_gb", "rows", "pretrained", "expected"), [
    (24, 5_000, True, "lora"),  # fits, too few rows for full fine-tuning
    (100, FULL_MIN_ROWS, True, "full"),
    (24, FULL_MIN_ROWS, True, "lora"),  # enough rows, but full does not fit
    (10, 5_000, True, "qlora"),  # the 16-bit base does not fit, the 4-bit one does
    (6, 5_000, True, "few_shot"),  # nothing trains in 6 GB
    (6, 5_000, False, "none"),  # and a scratch base has nothing to prompt
    (24, 60, True, "prompt"),
    (10, 60, True, "few_shot"),  # prompt tuning's 16-bit base does not fit
    (24, FEW_SHOT_MAX_ROWS - 1, True, "few_shot"),
    (24, 60, False, "lora"),  # a scratch base: no prompting, and a warning about the rows
    (24, None, True, "lora"),
])
def test_recommendation_follows_memory_and_data_size(budget_gb, rows, pretrained, expected):
    advice = recommend(_estimates(NEEDS, budget_gb * 1e9), rows, pretrained, budget_gb * 1e9)
    assert advice.method == expected, advice.reasons
    assert advice.reasons and all("\n" not in reason for reason in advice.reasons)


def test_a_setting_that_makes_a_preferred_method_fit_is_recommended_with_it():
    checkpointing = Variant("with train.gradient_checkpointing: true", 12e9, "train.gradient_checkpointing=true")
    eight_bit = Variant("with 8-bit AdamW states", 50e9, None)  # the train stage has no such setting
    variants = {"full": [eight_bit], "lora": [checkpointing]}
    advice = recommend(_estimates(NEEDS, 16e9), 5_000, True, 16e9, variants)
    assert (advice.method, advice.settings) == ("lora", ["train.gradient_checkpointing=true"])
    assert "  with train.gradient_checkpointing: true it would plan 12.0 GB: fits" in advice.reasons
    advice = recommend(_estimates(NEEDS, 55e9), FULL_MIN_ROWS, True, 55e9, variants)
    assert (advice.method, advice.settings) == ("lora", [])  # full only with 8-bit states: named, not chosen
    assert "  with 8-bit AdamW states it would plan 50.0 GB: fits" in advice.reasons


def test_small_budget_on_the_demo_model_picks_qlora_and_says_why(monkeypatch):
    recipe = load_recipe(DEMO_RECIPE, [*TINY_OVERRIDES, "train.batch_size=1", "train.max_length=8",
                                       "train.gradient_checkpointing=true"])  # no lighter LoRA to offer
    # One reading of the machine for both plans: the planned bytes include this process's resident memory, which
    # grows between the calls (the first imports torch and friends) by more than the gap the budget falls in.
    machine = detect_hardware()
    monkeypatch.setattr("ftcore.planning.plan.detect_hardware", lambda: machine)
    roomy = make_plan(recipe, DEMO_RECIPE)
    lora, qlora = roomy.estimates["lora"].planned_bytes, roomy.estimates["qlora"].planned_bytes
    tight = make_plan(recipe, DEMO_RECIPE, memory_gb=(lora + qlora) / 2 / 1e9)
    assert (roomy.recommendation.method, tight.recommendation.method) == ("lora", "qlora")
    assert any(line.startswith("LoRA r=8 (all-linear): peak") and "more than" in line
               for line in tight.recommendation.reasons)
    # The recommended overrides turn the recipe into the recommended method
    switched = load_recipe(DEMO_RECIPE, [*TINY_OVERRIDES, *tight.recommendation.settings])
    assert switched.method.name == "qlora"


def test_a_distributed_recipe_is_planned_per_process():
    """DDP holds a whole copy per process (on the CPU all of them in one RAM); FSDP shards weights, gradients and
    optimizer state; ZeRO-2 the gradients and optimizer state; a max_steps run sees num_processes x the batches."""
    base = [*TINY_OVERRIDES, "method={name: full}", "train.max_steps=10"]
    one = make_plan(load_recipe(DEMO_RECIPE, base), DEMO_RECIPE)
    ddp, fsdp, zero2 = (make_plan(load_recipe(DEMO_RECIPE, [*base, f"train.distributed={setting}"]), DEMO_RECIPE)
                        for setting in ("{num_processes: 2}", "{num_processes: 4, strategy: fsdp}",
                                        "{num_processes: 4, strategy: deepspeed}"))
    alone = one.estimates["full"].memory
    assert ddp.estimates["full"].memory == alone
    assert ddp.sequences_seen == 2 * one.sequences_seen and fsdp.sequences_seen == 4 * one.sequences_seen
    if not ddp.hardware.gpus:  # two processes in one RAM: twice one process's need, its overhead included
        assert ddp.estimates["full"].planned_bytes == pytest.approx(2 * needs(alone, ddp.hardware))
    sharded = fsdp.estimates["full"].memory
    assert (sharded.weights, sharded.gradients, sharded.optimizer) == pytest.approx(
        (alone.weights / 4, alone.gradients / 4, alone.optimizer / 4))
    assert sharded.activations == alone.activations
    stage2 = zero2.estimates["full"].memory
    assert (stage2.weights, stage2.gradients, stage2.optimizer) == pytest.approx(
        (alone.weights, alone.gradients / 4, alone.optimizer / 4))
    assert any(line.startswith("train.distributed: 2 ddp processes; peaks are per process")
               for line in ddp.recommendation.reasons)
    assert fsdp.estimates["few_shot"].memory == one.estimates["few_shot"].memory  # trains nothing: nothing to shard
