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
@pytest.mark.parametrize("file", ["ftcore/alignment/trainers.py", "ftcore/models/peft_methods.py",
                                  "ftcore/models/load.py"])
def test_editing_a_module_the_stage_reaches_changes_its_key(project_copy, stage, file):
    # trainers.py is imported by the training code inside functions only: the import system alone would miss it.
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
    assert {"tasks/train.py", "ftcore/training/train.py", "ftcore/alignment/trainers.py"} <= names
    assert not any(name.startswith(("flows/", "data_recipes/", "ftcore/serving/")) for name in names)


def test_the_reward_functions_a_recipe_uses_join_the_train_and_evaluate_keys(tmp_path, monkeypatch):
    """Reward functions come by name from entry points (data engineers' code): no import of a stage reaches them."""
    from ftcore.alignment import rewards
    from ftcore.config import EvaluateConfig, RewardConfig

    monkeypatch.setattr(rewards, "_REWARDS", dict(rewards.discover_rewards()))  # registered for this test only
    monkeypatch.syspath_prepend(str(tmp_path))
    module = tmp_path / "ftflow_test_rewards.py"
    module.write_text("from ftcore.alignment.rewards import reward_function\n\n\n@reward_function('test_reward')\n"
                      "def test_reward(prompts, completions, p, columns):\n    return [1.0] * len(completions)\n")
    importlib.import_module("ftflow_test_rewards")
    params = {"reward": RewardConfig(functions=[{"function": "test_reward"}]), "evaluate": EvaluateConfig()}

    def keys() -> list[str]:
        return [importlib.import_module(f"tasks.{s}").__dict__[s].cache_key_fn(None, params)
                for s in ("train", "evaluate")]

    before = keys()
    edit(tmp_path, "ftflow_test_rewards.py")
    after = keys()
    assert all(a != b for a, b in zip(after, before, strict=True))
