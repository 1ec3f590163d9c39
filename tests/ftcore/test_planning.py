"""The method advisor: exact parameter counts, memory estimates against measured peaks, data statistics from a
cleaned split, and the recommendation rules; for causal LMs and for the classifiers objective classification trains."""

import json

import pandas as pd
import pytest

from ftcore.errors import UserError
from ftcore.models.config import LoraMethod, ModelConfig, ScratchModelConfig
from ftcore.planning.advisor import FEW_SHOT_MAX_ROWS, FULL_MIN_ROWS, MethodEstimate, Variant, needs, recommend
from ftcore.planning.data import data_stats
from ftcore.planning.estimate import Memory, Setup, activation_bytes, training_flops, training_memory
from ftcore.planning.hardware import detect_hardware
from ftcore.planning.measure import (
    TEST_CLASSIFIER_PROBES,
    TEST_PROBES,
    Probe,
    estimate,
    measure_peak,
)
from ftcore.planning.plan import make_plan
from ftcore.planning.shape import VocabOnly, analytic_trainable, count_params, method_trainable, model_shape
from ftcore.recipe import load_recipe
from tests.conftest import DEMO_RECIPE, TINY_OVERRIDES
from tests.ftcore.objective_fixtures import objective_recipe, recipe_file
from tests.ftcore.pipeline_fixtures import prepare

TINY = ScratchModelConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2)
CLASSES = ["ham", "spam"]


def _real_model(cfg: ModelConfig, classes: list[str] | None = None):
    from ftcore.models.scratch import build_model

    return build_model(cfg.scratch, VocabOnly(cfg.scratch.vocab_size), classes)


@pytest.mark.parametrize("classes", [None, CLASSES], ids=["causal_lm", "classifier"])
@pytest.mark.parametrize("architecture", ["llama", "mixtral"])
@pytest.mark.parametrize("targets", ["all-linear", ["q_proj", "v_proj"]])
def test_meta_counts_equal_an_instantiated_model_for_full_and_lora(architecture, targets, classes):
    """A classifier's LoRA count includes its head, which PEFT trains whole (as init applies the method)."""
    from ftcore.models.peft_methods import apply_method

    cfg = ModelConfig(scratch=TINY.model_copy(update={"architecture": architecture}))
    lora = LoraMethod(r=4, target_modules=targets)
    assert model_shape(cfg, classes).total_params == count_params(_real_model(cfg, classes))[1]
    lora_real = count_params(apply_method(_real_model(cfg, classes), lora))[0]
    assert method_trainable(cfg, lora, classes) == (lora_real, "exact (PEFT on a meta model)")
    if architecture == "llama":  # the analytic fallback knows linear layers, not PEFT's wrappers of fused experts
        assert analytic_trainable(cfg, lora, classes) == lora_real


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


def test_plan_counts_what_the_init_stage_counts_for_a_classifier(tmp_path):
    """The classifier init builds on the train split's classes, with full fine-tuning and with LoRA (whose trainable
    parameters include the head, trained whole)."""
    from ftcore.data.clean import clean_balance_stage
    from ftcore.data.collect import CollectJob, collect_stage
    from ftcore.jobs import clean_job
    from ftcore.models.init import InitJob, init_stage

    path = recipe_file(tmp_path, objective_recipe(tmp_path / "data", "classification"))
    for method in ("method={name: full}", "method.r=4"):
        recipe = load_recipe(path, [method])
        collected = collect_stage(CollectJob(data=recipe.data, sources={}), tmp_path / method / "collected")
        dataset = clean_balance_stage(clean_job(recipe, collected), tmp_path / method / "clean")
        base = init_stage(InitJob(model=recipe.model, method=recipe.method, dataset=dataset, objective=recipe.spec),
                          tmp_path / method / "init")
        model = recipe.model.model_copy(update={"scratch": recipe.model.scratch.model_copy(
            update={"vocab_size": int(base.metrics["vocab_size"])})})
        assert base.classes == CLASSES
        trainable, counted = method_trainable(model, recipe.method, base.classes)
        assert trainable == base.metrics["trainable_params"] and counted.startswith("exact")
        total = model_shape(model, base.classes).total_params
        assert total == base.metrics["total_params"] - (trainable if "r=" in method else 0)


def test_a_method_that_needs_real_weights_is_counted_by_formula():
    # Prompt tuning initialised from text needs a tokenizer to embed the text: apply_method fails on a bare meta model
    recipe = load_recipe(DEMO_RECIPE, ["method={name: prompt, num_virtual_tokens: 7, init: text, init_text: hi}"])
    trainable, counted = method_trainable(recipe.model, recipe.method)
    assert counted.startswith("analytic") and trainable == 7 * recipe.model.scratch.hidden_size


def _estimate_error(probe: Probe) -> float:
    """(estimated - measured) / measured peak of a probe, after checking that the measured model trained the
    parameters the estimate counts."""
    measured = measure_peak(probe)
    assert measured.trainable_params == method_trainable(probe.model_config(), probe.method_config(),
                                                         probe.class_names())[0]
    return (estimate(probe).peak - measured.peak_bytes) / measured.peak_bytes


def test_estimates_are_within_30_percent_of_measured_peak_memory():
    """A scratch Llama of 5.3 M parameters, 2 steps of AdamW at batch 4 x 128 tokens in a fresh process: full
    fine-tuning and LoRA. ACTIVATION_FACTOR was fitted on other shapes (measure.CALIBRATION_PROBES)."""
    for probe in TEST_PROBES:
        error = _estimate_error(probe)
        assert abs(error) <= 0.30, f"{probe.method}: estimated {error:+.1%} off the measured peak"


def test_classifier_estimates_are_within_30_percent_of_measured_peak_memory():
    """The classifiers init builds for objective classification, 2 steps of AdamW on one label per sequence at the
    test probes' size, full fine-tuning and LoRA: on a scratch base the Llama with a 2-class head (measured -5.0 %,
    -3.2 %: without the causal LM's loss over the vocabulary, 32 MiB at this size), on a pretrained encoder a BERT
    with a new head (+15.2 %, +22.5 % to +24.6 %; docs/planning.md). One probe of each in the suite, the method
    each is furthest from the bound with (`python -m ftcore.planning.measure --classifiers` measures all four)."""
    for probe in [p for p in TEST_CLASSIFIER_PROBES if (p.architecture, p.method) in {("llama", "lora"),
                                                                                      ("bert", "full")}]:
        error = _estimate_error(probe)
        assert abs(error) <= 0.30, f"{probe.architecture} {probe.method}: estimated {error:+.1%} off the measured peak"


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


def test_a_classifier_holds_logits_over_its_classes_not_the_vocabulary():
    lm, classifier = model_shape(ModelConfig(scratch=TINY)), model_shape(ModelConfig(scratch=TINY), CLASSES)
    assert (classifier.architecture, classifier.num_labels, classifier.head_outputs) == \
        ("LlamaForSequenceClassification", 2, 2)
    assert (lm.num_labels, lm.head_outputs) == (None, TINY.vocab_size)
    # The classifier has no vocabulary projection: its head is hidden x classes, and stays out of the 4-bit weights
    assert lm.total_params - classifier.total_params == TINY.hidden_size * (TINY.vocab_size - 2)
    assert lm.quantizable_params == classifier.quantizable_params
    setup = Setup(batch_size=4, seq_len=64, value_bytes=4)
    # The loss's four tensors per token: logits, log-softmax and their gradients, over 2 classes instead of 128 tokens
    assert activation_bytes(lm, setup) - activation_bytes(classifier, setup) == 4 * 64 * 4 * (128 - 2) * 4


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


def test_a_classification_split_gives_its_classes_and_its_texts_lengths(ftflow_home, tmp_path):
    """The label is the target, not input: only the text is tokenized, with no EOS appended (the classifier's
    trainer appends none); the classes are the split's, sorted, as init reads them."""
    from ftcore.models.scratch import train_tokenizer

    path = recipe_file(tmp_path, objective_recipe(tmp_path / "data", "classification"))
    recipe = load_recipe(path, ["train.max_length=64"])
    split = pd.DataFrame({"text": ["free prize, call now", "see you at lunch", "ok"], "label": ["spam", "ham", "ok"]})
    _write_run(ftflow_home, "mine", recipe.content_hash(), path, split)
    stats = data_stats(recipe, path)
    tokenizer = train_tokenizer(split["text"].tolist(), 400)  # as init trains it, on the text alone
    lengths = [len(ids) for ids in tokenizer(split["text"].tolist())["input_ids"]]
    assert (stats.rows_train, stats.tokens_per_row, stats.seq_len) == (3, sum(lengths) / 3, max(lengths))
    assert stats.classes == ["ham", "ok", "spam"]


def test_classes_come_from_the_sources_before_a_run(tmp_path):
    """Labels mapped and written as collect writes them (a source's `columns:`, a number as text)."""
    from tests.ftcore.objective_fixtures import write_jsonl

    rows = [{"message": "win a prize", "is_spam": 1}, {"message": "lunch?", "is_spam": 0},
            {"message": "call now", "is_spam": 1}]
    source = {"type": "jsonl", "path": str(write_jsonl(tmp_path / "sms.jsonl", rows)),
              "columns": {"text": "message", "label": "is_spam"}}
    path = recipe_file(tmp_path, {"objective": "classification",
                                  "data": {"sources": [source], "format": "text_label"}})
    stats = data_stats(load_recipe(path), path)
    assert stats.classes == ["0", "1"] and "no cleaned train split yet: 3 source rows" in stats.source
    sft = data_stats(load_recipe(DEMO_RECIPE), DEMO_RECIPE)
    assert sft.classes is None  # a causal LM: no classes


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


@pytest.mark.parametrize(("offered", "rows", "expected"), [
    (("full", "lora", "qlora", "prompt"), FEW_SHOT_MAX_ROWS - 1, "prompt"),  # no few-shot: the next rule's method
    (("full", "lora", "qlora"), FEW_SHOT_MAX_ROWS - 1, "lora"),  # nor prompt tuning: adapters
    (("full", "lora", "qlora"), 60, "lora"),
])
def test_only_the_methods_on_offer_are_recommended(offered, rows, expected):
    """A classifier is not offered few-shot prompting, a decoder's classifier not prompt tuning either."""
    estimates = _estimates({name: NEEDS[name] for name in offered}, 24e9)
    advice = recommend(estimates, rows, True, 24e9)
    assert advice.method == expected, advice.reasons


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


def test_a_classification_recipe_is_planned_as_the_classifier_init_builds(tmp_path):
    path = recipe_file(tmp_path, objective_recipe(tmp_path / "data", "classification"))
    plan = make_plan(load_recipe(path), path)
    assert (plan.model.architecture, plan.model.num_labels) == ("LlamaForSequenceClassification", 2)
    assert plan.data.classes == CLASSES
    # No few-shot prompting of a classifier, nor prompt tuning of a decoder's (the support rules refuse it)
    assert set(plan.estimates) == {"full", "lora", "qlora"} and set(plan.left_out) == {"few_shot", "prompt"}
    assert "few-shot prompting applies to objectives sft and multitask" in plan.left_out["few_shot"]
    assert "cannot find each text's last token" in plan.left_out["prompt"]
    assert any(line.startswith("few_shot left out:") for line in plan.recommendation.reasons)
    assert plan.recommendation.method in plan.estimates
    assert plan.to_dict()["left_out"] == plan.left_out


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
