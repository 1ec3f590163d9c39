"""The pieces of continual fine-tuning: replay mixing, the regulariser's penalty, the EWC Fisher, forgetting's sign,
general-data files as retained data, and the recipe checks."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from ftcore.data.retained import file_data
from ftcore.errors import DataError, RecipeError
from ftcore.evaluation.evaluate import evaluate_models
from ftcore.evaluation.scorers import Scoring
from ftcore.objectives import OBJECTIVES
from ftcore.recipe import load_recipe
from ftcore.training.config import RegularizerConfig
from ftcore.training.continual import anchor_to_start, diagonal_fisher, with_replay
from ftcore.training.jobs import TrainJob
from ftcore.training.train import load_for_training
from tests.ftcore.objective_fixtures import objective_recipe, qa_rows, recipe_file, write_jsonl
from tests.ftcore.test_objectives import prepare


def frame(n: int, tag: str) -> pd.DataFrame:
    return pd.DataFrame({"prompt": [f"{tag} q{i}" for i in range(n)], "completion": [f"a{i}" for i in range(n)],
                         "raw_prompt": "x"})


def test_replay_adds_the_share_of_retained_rows_and_only_the_format_columns():
    mixed, n = with_replay(frame(70, "new"), frame(10, "old"), 0.3, seed=0)
    assert n == 30 and len(mixed) == 100
    assert mixed["prompt"].str.startswith("old").sum() == 30  # 10 retained rows drawn with replacement
    assert mixed.loc[70:, "raw_prompt"].isna().all()  # only the columns the task trains on come along
    unchanged, none = with_replay(frame(5, "new"), frame(3, "old"), 0.0, seed=0)
    assert none == 0 and len(unchanged) == 5
    with pytest.raises(DataError, match="the retained rows lack prompt, completion"):
        with_replay(frame(5, "new"), pd.DataFrame({"text": ["t"]}), 0.5, seed=0)


class ToyTrainer:
    def __init__(self):
        self.model = torch.nn.Linear(2, 1, bias=False)
        self.model.weight.data = torch.tensor([[1.0, 2.0]])

    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        loss = torch.tensor(0.5)
        return (loss, "outputs") if return_outputs else loss


@pytest.mark.parametrize("fisher", [None, {"weight": torch.tensor([[4.0, 0.0]])}])
def test_the_regulariser_penalises_the_distance_from_the_starting_weights(fisher):
    trainer = ToyTrainer()
    anchor_to_start(trainer, RegularizerConfig(weight=0.1), fisher)
    assert trainer.compute_loss(trainer.model, {}).item() == pytest.approx(0.5)  # at the start: no penalty
    trainer.model.weight.data += torch.tensor([[1.0, 3.0]])
    squared = torch.tensor([[1.0, 9.0]]) * (fisher["weight"] if fisher else 1)
    loss, outputs = trainer.compute_loss(trainer.model, {}, return_outputs=True)
    assert loss.item() == pytest.approx(0.5 + 0.1 * squared.sum().item()) and outputs == "outputs"


def test_the_fisher_is_positive_on_the_adapter_and_averages_one(tmp_path):
    _, dataset, base = prepare(tmp_path, "sft")
    model, tokenizer = load_for_training(TrainJob(base=base, dataset=dataset))
    fisher = diagonal_fisher(model, tokenizer, pd.read_parquet(dataset.splits["train"]),
                             RegularizerConfig(method="ewc", fisher_batches=2), batch_size=4, seed=0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert fisher.keys() == trainable
    values = torch.cat([f.flatten() for f in fisher.values()])
    assert values.mean().item() == pytest.approx(1.0, rel=1e-4) and (values >= 0).all() and values.max() > 1
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())  # no gradient left behind


def test_forgetting_is_the_ground_lost_on_the_retained_rows(tmp_path):
    recipe, dataset, base = prepare(tmp_path, "sft")
    retained = tmp_path / "retained.parquet"
    pd.read_parquet(dataset.splits["test"]).to_parquet(retained)
    # The same folder twice: nothing can be lost.
    scoring = Scoring(splits=dataset.splits, evaluate=recipe.evaluate, objective=OBJECTIVES["sft"],
                      retained_test=retained)
    same = evaluate_models({"base": base.base_path, "candidate": base.base_path}, scoring,
                           tmp_path / "evaluate").metrics
    assert same["forgetting.exact_match"] == 0 and same["forgetting.perplexity"] == 0
    assert same["retained.base.perplexity"] == same["base.perplexity"]  # the same rows as the test split


def test_a_general_data_file_is_templated_and_split_80_20(tmp_path):
    recipe = load_recipe(recipe_file(tmp_path, objective_recipe(tmp_path / "data", "sft")))
    general = write_jsonl(tmp_path / "general.jsonl", [{"prompt": r["question"], "completion": r["answer"]}
                                                       for r in qa_rows()])
    retained = file_data(general, recipe.data, seed=0)
    train, test = pd.read_parquet(retained.train), pd.read_parquet(retained.test)
    assert (len(train), len(test)) == (36, 9)
    assert test["prompt"].str.startswith("Question: ").all() and "raw_completion" in test
    assert file_data(general, recipe.data, seed=0).fingerprint == retained.fingerprint
    (tmp_path / "bad.jsonl").write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(DataError, match="lacks the column"):
        file_data(tmp_path / "bad.jsonl", recipe.data, seed=0)


@pytest.mark.parametrize(("task", "override", "message"), [
    ("classification", "continual={data: champion}", "continual: for objectives sft, multitask, dapt"),
    ("sft", "continual={data: champion}", "continual.data: champion is the dataset of the version"),
    ("sft", "continual={data: general.csv}", "give champion, or a .jsonl or .parquet file"),
    ("sft", "continual={data: missing.jsonl}", "file not found"),
    ("sft", "continual={data: champion, replay: 1.0}", "replay"),
    ("sft", "continual={data: champion, regularizer: {method: sgd}}", "regularizer.method"),
])
def test_continual_options_that_cannot_work_are_refused(tmp_path, task, override, message):
    path = recipe_file(tmp_path, objective_recipe(tmp_path / "data", task))
    with pytest.raises(RecipeError, match=message):
        load_recipe(path, ["model.source=champion" if "champion is" not in message else "model.source=scratch",
                           override])


def test_start_adapter_continues_the_champions_own_adapter_on_its_recovered_base(tmp_path):
    from safetensors.torch import load_file

    from ftcore import tracking, versions
    from ftcore.models.config import ModelConfig
    from ftcore.models.init import InitJob, init_stage
    from ftcore.models.load import load_model, load_trained
    from ftcore.models.peft_methods import attach_adapter
    from ftcore.models.registered import pin_registered
    from ftcore.training.train import train_stage

    recipe, dataset, base = prepare(tmp_path, "sft")
    trained = train_stage(TrainJob(base=base, dataset=dataset, train=recipe.train), tmp_path / "train")
    run_id = tracking.start_pipeline_run("continual", "run", {}, {})
    version = versions.register_version(run_id, "continued", trained.model_path, {})
    versions.set_alias("continued", versions.CHAMPION, version)
    start = pin_registered("continued", versions.CHAMPION, None, "model.source: champion")
    cfg = ModelConfig(source="champion", start="adapter")
    continued = init_stage(InitJob(model=cfg, method=recipe.method, dataset=dataset, objective=OBJECTIVES["sft"],
                                   start=start), tmp_path / "init")

    original, recovered = (load_file(p / "model.safetensors") for p in (base.base_path, continued.base_path))
    assert continued.base_path == tmp_path / "init" / "base" and original.keys() == recovered.keys()
    assert max((original[k] - recovered[k]).abs().max().item() for k in original) < 1e-5  # the delta subtracted
    champion_adapter = load_file(trained.adapter_path / "adapter_model.safetensors")
    initial_adapter = load_file(continued.adapter_path / "adapter_model.safetensors")
    assert all(torch.equal(champion_adapter[k], initial_adapter[k]) for k in champion_adapter)
    # Base + continued adapter is the champion: training picks up exactly where it stopped.
    resumed = attach_adapter(load_model(continued.base_path), continued.adapter_path, trainable=False)
    champion, tokenizer = load_trained(trained.model_path)
    ids = tokenizer(["Question: What does MI mean?\nAnswer:"], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(resumed(**ids).logits, champion(**ids).logits, atol=1e-4)


def test_start_adapter_needs_a_method_whose_adapter_can_be_continued(tmp_path):
    path = recipe_file(tmp_path, objective_recipe(tmp_path / "data", "sft"))
    with pytest.raises(RecipeError, match=r"model\.start: adapter continues the champion's adapter, which method dora"):
        load_recipe(path, ["model={source: champion, start: adapter}", "method={name: dora}"])
    with pytest.raises(RecipeError, match="start: only for source: champion"):
        load_recipe(path, ["model.start=adapter"])
