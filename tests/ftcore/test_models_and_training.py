import json

import pytest
from safetensors.torch import load_file

from ftcore.errors import UserError
from ftcore.models.init import InitJob, init_stage
from ftcore.recipe import load_recipe
from ftcore.training.jobs import TrainJob
from ftcore.training.train import train_stage
from tests.conftest import DEMO_RECIPE
from tests.ftcore.pipeline_fixtures import prepare


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    prepared = prepare(root)
    trained = train_stage(TrainJob(base=prepared.base, dataset=prepared.dataset, train=prepared.recipe.train),
                          root / "train")
    return prepared, trained


def test_scratch_init_builds_a_llama_with_a_corpus_tokenizer_and_a_lora_adapter(lora_run):
    prepared, _ = lora_run
    base = prepared.base
    config = json.loads((base.base_path / "config.json").read_text())
    assert config["model_type"] == "llama" and config["hidden_size"] == 96
    assert (base.base_path / "model.safetensors").exists() and (base.base_path / "tokenizer.json").exists()
    assert base.adapter_path is not None and (base.adapter_path / "adapter_model.safetensors").exists()
    assert 0 < base.metrics["trainable_fraction"] < 0.5
    assert base.metrics["vocab_size"] <= 400


def test_init_is_deterministic_for_a_seed(tmp_path, lora_run):
    prepared, _ = lora_run
    again = init_stage(InitJob(model=prepared.recipe.model, method=prepared.recipe.method, dataset=prepared.dataset),
                       tmp_path / "init")
    assert again.content_hash == prepared.base.content_hash


def test_lora_training_lowers_the_loss_changes_the_adapter_and_leaves_the_base_frozen(lora_run):
    prepared, trained = lora_run
    history = json.loads(trained.history_path.read_text())
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) >= 3 and losses[-1] < 0.9 * losses[0]
    before = load_file(prepared.base.adapter_path / "adapter_model.safetensors")
    after = load_file(trained.adapter_path / "adapter_model.safetensors")
    assert before.keys() == after.keys()
    changed = [k for k in before if not before[k].equal(after[k])]
    assert len(changed) == len(before)  # every LoRA matrix moved (B starts at zero)
    base = load_file(prepared.base.base_path / "model.safetensors")
    merged = load_file(trained.model_path / "model.safetensors")
    # LoRA targets linear layers only: the embeddings were frozen and must be untouched after merging.
    assert merged["model.embed_tokens.weight"].equal(base["model.embed_tokens.weight"])
    assert not merged["model.layers.0.self_attn.q_proj.weight"].equal(base["model.layers.0.self_attn.q_proj.weight"])
    assert trained.artifacts["loss_plot"].stat().st_size > 1000


def test_full_fine_tuning_updates_every_weight(tmp_path):
    prepared = prepare(tmp_path, "method={name: full}", "train.max_steps=3")
    assert prepared.base.adapter_path is None and prepared.base.metrics["trainable_fraction"] == 1.0
    trained = train_stage(TrainJob(base=prepared.base, dataset=prepared.dataset, train=prepared.recipe.train),
                          tmp_path / "train")
    assert trained.metrics["steps"] == 3
    base = load_file(prepared.base.base_path / "model.safetensors")
    after = load_file(trained.model_path / "model.safetensors")
    assert base.keys() == after.keys()
    unchanged = [k for k in base if after[k].equal(base[k])]
    assert unchanged == []


def test_pretrained_source_loads_a_local_folder(tmp_path, lora_run):
    prepared, trained = lora_run
    recipe = load_recipe(DEMO_RECIPE, ["model.source=pretrained", f"model.name_or_path={trained.model_path}"])
    base = init_stage(InitJob(model=recipe.model, method=recipe.method, dataset=prepared.dataset), tmp_path / "init")
    assert base.base_path == trained.model_path
    assert base.adapter_path is not None


def test_pretrained_source_that_does_not_load_is_a_user_error(tmp_path, lora_run):
    prepared, _ = lora_run
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    recipe = load_recipe(DEMO_RECIPE, ["model.source=pretrained", f"model.name_or_path={empty}"])
    with pytest.raises(UserError, match=r"model\.name_or_path: .* has no config\.json"):
        init_stage(InitJob(model=recipe.model, method=recipe.method, dataset=prepared.dataset), tmp_path / "init")


@pytest.mark.parametrize("method", ["qlora", "adapter", "prefix", "prompt", "p_tuning"])
def test_methods_that_need_their_own_loading_train_export_and_reload(tmp_path, method):
    """QLoRA trains on a 4-bit base and merges into the fp32 one; adapters and prompt methods cannot merge, so
    `model/` carries them beside the base. Each exported model loads and answers differently from the base."""
    import torch

    from ftcore.models.load import load_model, load_trained

    prepared = prepare(tmp_path, f"method={{name: {method}}}", "train.max_steps=6", "train.logging_steps=1",
                       "train.learning_rate=5e-2")
    trained = train_stage(TrainJob(base=prepared.base, dataset=prepared.dataset, train=prepared.recipe.train),
                          tmp_path / "train")
    model, tokenizer = load_trained(trained.model_path)
    base = load_model(prepared.base.base_path)
    inputs = tokenizer(["Question: What does MI stand for?\nAnswer:"], return_tensors="pt")
    with torch.no_grad():
        # The next-token logits: prompt methods prepend virtual tokens, so whole sequences differ in length.
        assert not torch.allclose(model(**inputs).logits[:, -1], base(**inputs).logits[:, -1])
    assert (trained.model_path / "adapter").is_dir() == (method != "qlora")


def test_a_scratch_mixture_of_experts_trains_lora_on_attention_and_experts_and_logs_the_router_loss(tmp_path):
    """architecture: mixtral builds a Mixtral-style MoE (router + fused experts per layer); LoRA goes on the
    attention and MLP linear layers and, through target_parameters, on the experts' fused weights."""
    experts = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
    prepared = prepare(tmp_path, "model.scratch.architecture=mixtral", "model.scratch.num_experts=4",
                       f"method.target_parameters={experts}", "train.max_steps=12", "train.logging_steps=2")
    config = json.loads((prepared.base.base_path / "config.json").read_text())
    assert config["model_type"] == "mixtral" and config["num_local_experts"] == 4
    before = load_file(prepared.base.adapter_path / "adapter_model.safetensors")
    assert any("experts" in k for k in before) and any("self_attn.q_proj" in k for k in before)
    trained = train_stage(TrainJob(base=prepared.base, dataset=prepared.dataset, train=prepared.recipe.train),
                          tmp_path / "train")
    history = json.loads(trained.history_path.read_text())
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < 0.9 * losses[0]
    after = load_file(trained.adapter_path / "adapter_model.safetensors")
    expert_lora = [k for k in before if "experts" in k and "lora_B" in k]
    assert expert_lora and all(not after[k].equal(before[k]) for k in expert_lora)  # the experts' LoRA trained
    router_losses = [h["aux_loss"] for h in history if "aux_loss" in h]
    assert len(router_losses) == len(losses) and all(loss > 0 for loss in router_losses)
    assert trained.metrics["router_aux_loss_last"] == router_losses[-1]
