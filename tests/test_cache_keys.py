"""A stage's cache key follows the code it runs: every project module its task module reaches by imports (those
inside functions too) and the data files they read, and nothing else. Edits are made to a copy of the project's
packages, which the closure is pointed at, so the checkout is never touched."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import pytest

from tasks import code_closure
from tasks.common import stage_task


@pytest.fixture
def project_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    roots = {name: Path(shutil.copytree(root, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__")))
             for name, root in code_closure.project_packages().items()}
    monkeypatch.setattr(code_closure, "project_packages", lambda: roots)
    return tmp_path


def stage_key(stage: str) -> str:
    """The stage's cache key for fixed inputs, from its task function decorated anew (the decorator hashes the code
    when it runs) with the real decorator."""
    fn = importlib.import_module(f"tasks.{stage}").__dict__[stage].fn
    return stage_task(stage)(fn).cache_key_fn(None, {})


def edit(root: Path, file: str) -> None:
    with (root / file).open("a", encoding="utf-8") as f:
        f.write("\n# edited\n")


@pytest.mark.parametrize("stage", ["train", "evaluate"])
@pytest.mark.parametrize("file", ["ftcore/training/alignment_trainers.py", "ftcore/models/peft_methods.py",
                                  "ftcore/models/load.py", "ftcore/training/callbacks.py"])
def test_editing_a_module_the_stage_reaches_changes_its_key(project_copy, stage, file):
    # callbacks.py is imported by the training code inside a function only: following the imports at module level
    # alone would miss it (the DPO/RL trainers, lazily imported before, now are at module level).
    before = stage_key(stage)
    edit(project_copy, file)
    assert stage_key(stage) != before


@pytest.mark.parametrize(("stage", "file"), [
    ("evaluate", "ftcore/data/resources/toxicity_lexicon.txt"),  # read through importlib.resources.files("ftcore.data")
    ("evaluate", "ftcore/evaluation/metric_modules/squad.py"),  # loaded by path, beside scoring.py: never imported
    ("collect", "tasks/secrets.py"),  # the task layer's own helpers count too
])
def test_editing_a_file_the_stage_reads_by_name_changes_its_key(project_copy, stage, file):
    before = stage_key(stage)
    edit(project_copy, file)
    assert stage_key(stage) != before


def test_editing_a_module_no_import_of_the_stage_reaches_leaves_its_key(project_copy):
    before = {stage: stage_key(stage) for stage in ("train", "evaluate", "monitor")}
    edit(project_copy, "ftcore/serving/app.py")
    after = {stage: stage_key(stage) for stage in before}
    assert after["train"] == before["train"] and after["evaluate"] == before["evaluate"]
    assert after["monitor"] != before["monitor"]  # the stage that serves the model does run it


def test_the_closure_is_the_project_s_code_only():
    files = code_closure.code_closure("tasks.train")
    roots = code_closure.project_packages().values()
    assert all(any(f.is_relative_to(root) for root in roots) for f in files)
    names = {"/".join(code_closure.project_path(f)) for f in files}
    assert {"tasks/train.py", "ftcore/training/train.py", "ftcore/training/alignment_trainers.py"} <= names
    assert not any(name.startswith(("flows/", "data_recipes/", "ftcore/serving/")) for name in names)


def test_the_reward_functions_a_recipe_uses_join_the_train_and_evaluate_keys_and_folders(tmp_path, monkeypatch,
                                                                                           request):
    """Reward functions come by name from entry points (data engineers' code): no import of a stage reaches them. An
    edited one re-runs train and evaluate into new folders, so the older cache entries keep what they point at."""
    from ftcore.alignment.config import RewardConfig
    from ftcore.alignment.rewards import REWARDS
    from ftcore.evaluation.jobs import EvaluateJob
    from ftcore.objectives import OBJECTIVES
    from ftcore.outputs import DatasetOutput, ModelOutput, TrainOutput
    from ftcore.training.jobs import TrainJob

    request.addfinalizer(lambda: REWARDS.unregister("test_reward"))  # registered for this test only
    monkeypatch.syspath_prepend(str(tmp_path))
    module = tmp_path / "ftflow_test_rewards.py"
    module.write_text("from ftcore.alignment.rewards import reward_function\n\n\n@reward_function('test_reward')\n"
                      "def test_reward(prompts, completions, p, columns):\n    return [1.0] * len(completions)\n")
    importlib.import_module("ftflow_test_rewards")
    reward, rl = RewardConfig(functions=[{"function": "test_reward"}]), OBJECTIVES["rl"]
    base = ModelOutput(path=tmp_path, content_hash="b", base_path=tmp_path, method="lora")
    dataset = DatasetOutput(path=tmp_path, content_hash="d", splits={}, rows=0)
    trained = TrainOutput(path=tmp_path, content_hash="t", model_path=tmp_path, history_path=tmp_path)
    jobs = {"train": TrainJob(base=base, dataset=dataset, objective=rl, reward=reward),
            "evaluate": EvaluateJob(base=base, trained=trained, dataset=dataset, objective=rl, reward=reward)}

    def keys_and_folders() -> list[tuple[str, Path]]:
        tasks = {stage: importlib.import_module(f"tasks.{stage}") for stage in jobs}
        return [(task.__dict__[stage].cache_key_fn(None, {"job": jobs[stage]}),
                 folder_used(monkeypatch, task, lambda task=task, stage=stage: task.__dict__[stage].fn(jobs[stage])))
                for stage, task in tasks.items()]

    before = keys_and_folders()
    edit(tmp_path, "ftflow_test_rewards.py")
    after = keys_and_folders()
    assert all(a[0] != b[0] and a[1] != b[1] for a, b in zip(after, before, strict=True))


class FolderUsed(Exception):
    """Raised by a stand-in for a stage function: the folder its task handed it."""


def folder_used(monkeypatch: pytest.MonkeyPatch, task, call) -> Path:
    """The output folder the task module `task` gives its stage function when `call()` runs the task's body."""
    name = next(n for n in vars(task) if n.endswith("_stage") and callable(vars(task)[n]))

    def stand_in(job, out_dir, *args, **kwargs):
        raise FolderUsed(out_dir)

    monkeypatch.setattr(task, name, stand_in)
    with pytest.raises(FolderUsed) as used:
        call()
    return used.value.args[0]


def test_a_data_stage_job_counts_by_content_and_runtime_stays_out_of_the_key(tmp_path, monkeypatch):
    """collect's key follows the pinned source fingerprints, not where or in what batches it runs; clean_balance's
    job counts the collected rows by their content hash, so a collect re-run that read the same rows into another
    folder leaves clean_balance's key and folder as they were."""
    import tasks.clean_balance
    from ftcore.data.config import DataConfig, RuntimeConfig
    from ftcore.jobs import clean_job, collect_job
    from ftcore.outputs import DatasetOutput
    from ftcore.pins import Pins
    from ftcore.recipe import Recipe
    from tasks.collect import collect
    from tasks.common import jsonable

    source = tmp_path / "rows.jsonl"
    source.write_text('{"prompt": "a", "completion": "b"}\n')
    recipe = Recipe(name="r", data=DataConfig(sources=[{"type": "jsonl", "path": source}]))

    def key(fingerprint: str, runtime: RuntimeConfig) -> str:
        job = collect_job(recipe, Pins(sources={str(source): fingerprint}))
        return collect.cache_key_fn(None, {"job": job, "runtime": runtime})

    assert key("h1", RuntimeConfig()) == key("h1", RuntimeConfig(batch_rows=7))
    assert key("h1", RuntimeConfig()) != key("h2", RuntimeConfig())

    def cleaned(folder: str, content_hash: str):
        collected = DatasetOutput(path=tmp_path / folder, content_hash=content_hash, rows=1,
                                  splits={"all": tmp_path / folder / "collected.parquet"}, metrics={"s": len(folder)})
        return clean_job(recipe, collected)

    def folder(job) -> Path:
        return folder_used(monkeypatch, tasks.clean_balance,
                           lambda: tasks.clean_balance.clean_balance.fn(job, RuntimeConfig()))

    assert jsonable(cleaned("a", "h1")) == jsonable(cleaned("bb", "h1"))
    assert folder(cleaned("a", "h1")) == folder(cleaned("bb", "h1")) != folder(cleaned("a", "h2"))


def test_deploy_is_keyed_on_the_tracking_uri_not_the_run_and_each_run_gets_its_own_folder(tmp_path, monkeypatch):
    """deploy's job holds the MLflow server it registers on (another server registers anew); the run id and tags are
    per execution (a cached deploy registers nothing again), yet name the folder: it records this run's version and
    exports. The trained model counts by its content, so a train re-run into another folder leaves deploy cached."""
    import tasks.deploy
    from ftcore.data.config import DataConfig
    from ftcore.jobs import deploy_job
    from ftcore.outputs import DatasetOutput, EvalOutput, TrainOutput
    from ftcore.recipe import Recipe
    from tasks.deploy import deploy

    source = tmp_path / "rows.jsonl"
    source.write_text('{"prompt": "a", "completion": "b"}\n')
    recipe = Recipe(name="r", data=DataConfig(sources=[{"type": "jsonl", "path": source}]))
    dataset = DatasetOutput(path=tmp_path / "d", content_hash="d", rows=3, splits={"test": tmp_path / "d/test.parquet"})
    evaluation = EvalOutput(path=tmp_path / "e", content_hash="e", predictions_path=tmp_path / "e/p.jsonl")

    def job(folder: str = "t"):
        trained = TrainOutput(path=tmp_path / folder, content_hash="t", model_path=tmp_path / folder / "model",
                              history_path=tmp_path / folder / "history.json", metrics={"s": len(folder)})
        return deploy_job(recipe, trained, evaluation, dataset)

    def key(job, run: str) -> str:
        return deploy.cache_key_fn(None, {"job": job, "mlflow_run_id": run, "run_tags": {"run": run}})

    assert job().registered_model == "r" and job().deploy == recipe.deploy
    assert key(job(), "1") == key(job(), "2") == key(job("elsewhere"), "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert job().tracking_uri == "http://mlflow.example:5000" and key(job(), "1") != key(job().model_copy(
        update={"tracking_uri": "sqlite:///other.db"}), "1")
    folders = [folder_used(monkeypatch, tasks.deploy, lambda run=run: deploy.fn(job(), run, {})) for run in "12"]
    assert folders[0] != folders[1]


def test_monitor_is_keyed_on_its_job_and_the_canaries_content(tmp_path, monkeypatch):
    import tasks.monitor
    from ftcore.data.config import DataConfig
    from ftcore.jobs import monitor_job
    from ftcore.monitor.config import MonitorConfig
    from ftcore.outputs import DatasetOutput, DeployOutput
    from ftcore.recipe import Recipe
    from tasks.monitor import monitor

    canaries = tmp_path / "canaries.jsonl"
    canaries.write_text('{"question": "q", "answer": "a"}\n')
    source = tmp_path / "rows.jsonl"
    source.write_text('{"prompt": "a", "completion": "b"}\n')
    recipe = Recipe(name="r", data=DataConfig(sources=[{"type": "jsonl", "path": source}]),
                    monitor=MonitorConfig(canaries=canaries))
    dataset = DatasetOutput(path=tmp_path / "d", content_hash="d", rows=3, splits={"test": tmp_path / "d/test.parquet"})

    def job(version: str = "1"):
        deployed = DeployOutput(path=tmp_path / "deploy", content_hash=f"v{version}", registered_model="r",
                                version=version, aliases=[], uri=f"models:/r/{version}", gate_passed=True,
                                gate_reason="")
        return monitor_job(recipe, deployed, dataset)

    def key_and_folder(job) -> tuple[str, object]:
        return (monitor.cache_key_fn(None, {"job": job}),
                folder_used(monkeypatch, tasks.monitor, lambda: monitor.fn(job)))

    assert job().prompt_template == recipe.data.prompt_template and job().toxicity == recipe.evaluate.safety.toxicity
    before = key_and_folder(job())
    assert key_and_folder(job("2"))[0] != before[0]
    canaries.write_text('{"question": "q", "answer": "b"}\n')
    after = key_and_folder(job())
    assert after[0] != before[0] and after[1] != before[1]


def test_a_new_version_of_a_library_that_decides_results_changes_every_key(monkeypatch):
    from tasks import common

    before = {stage: stage_key(stage) for stage in ("init", "train", "evaluate")}
    versions = {**common.library_versions(), "transformers": "0.0.1"}
    monkeypatch.setattr(common, "library_versions", lambda: versions)
    assert all(stage_key(stage) != key for stage, key in before.items())


def test_editing_the_training_code_leaves_the_stages_before_train_cached(project_copy):
    """The data stages and init reach neither the recipe nor the trainers (each takes its own job), so a change to the
    training code re-runs train and what follows only."""
    before = {stage: stage_key(stage) for stage in ("collect", "clean_balance", "init", "train")}
    edit(project_copy, "ftcore/training/trainers.py")
    after = {stage: stage_key(stage) for stage in before}
    assert {stage for stage in before if after[stage] != before[stage]} == {"train"}


def test_a_replaced_canary_picture_changes_the_canaries_fingerprint(tmp_path):
    from ftcore.monitor.canaries import canaries_fingerprint

    canaries = tmp_path / "canaries.jsonl"
    canaries.write_text('{"question": "What is this?", "answer": "a red circle", "image": "red.png"}\n')
    (tmp_path / "red.png").write_bytes(b"\x89PNG first")
    before = canaries_fingerprint(canaries)
    assert canaries_fingerprint(canaries) == before
    (tmp_path / "red.png").write_bytes(b"\x89PNG second")
    assert canaries_fingerprint(canaries) != before
