"""Runs the step from docs/adding-a-cleaning-step.md exactly as written, so the walkthrough stays true."""

import re
import sys
import types

import pandas as pd
import pytest
import yaml

from ftcore import registry
from ftcore.data.clean import run_steps
from ftcore.data.config import StepSpec
from ftcore.errors import RecipeError
from ftcore.recipe import load_recipe
from tests.conftest import DEMO_RECIPE, REPO

DOC = REPO / "docs" / "adding-a-cleaning-step.md"


@pytest.fixture
def walkthrough_step():
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL).group(1)
    module = types.ModuleType("walkthrough_drop_boilerplate")
    sys.modules[module.__name__] = module
    exec(compile(code, str(DOC), "exec"), module.__dict__)
    yield
    registry.STEPS.unregister("drop_boilerplate")
    sys.modules.pop(module.__name__, None)


@pytest.mark.usefixtures("walkthrough_step")
def test_the_documented_step_registers_and_quarantines_with_a_reason():
    rows = pd.DataFrame({
        "prompt": ["What is BP?", "What is MI?", "Treatment?"],
        "completion": ["blood pressure", "  This information is NOT intended to replace advice.", "see your doctor"],
    })
    spec = StepSpec(step="drop_boilerplate", phrases=["this information is not intended", "see your doctor"])
    kept, quarantine, metrics = run_steps(rows, [spec], ["prompt", "completion"])
    assert kept["prompt"].tolist() == ["What is BP?"]
    assert quarantine["reason"].tolist() == [
        "completion is boilerplate: starts with 'this information is not intended'",
        "completion is boilerplate: starts with 'see your doctor'",
    ]
    assert metrics["drop_boilerplate.rows_quarantined"] == 2


@pytest.mark.usefixtures("walkthrough_step")
def test_the_documented_step_quarantines_the_shipped_medquad_rows_the_guide_says(shared_data):
    """The guide's phrases match rows the shipped data really has, in the number its summary line states."""
    doc = DOC.read_text()
    rows = pd.read_json(shared_data / "medquad_sample_every16.jsonl", lines=True)
    rows = rows.rename(columns={"question": "prompt", "answer": "completion"})[["prompt", "completion"]]
    steps = [StepSpec(**step) for step in yaml.safe_load(re.search(r"```yaml\n(.*?)```", doc, re.DOTALL).group(1))
             ["clean"]["steps"]]
    _, quarantine, metrics = run_steps(rows, steps, ["prompt", "completion"])
    stated = int(re.search(r"`drop_boilerplate quarantined (\d+)`", doc).group(1))
    assert metrics["drop_boilerplate.rows_quarantined"] == stated > 0
    assert (quarantine["step"] == "drop_boilerplate").sum() == stated
    # The step's own default phrase alone finds rows too.
    _, _, alone = run_steps(rows, [StepSpec(step="drop_boilerplate")], ["prompt", "completion"])
    assert alone["drop_boilerplate.rows_quarantined"] > 0


@pytest.mark.usefixtures("walkthrough_step")
def test_the_documented_step_is_usable_from_a_recipe_and_its_typos_fail_at_load():
    recipe = load_recipe(DEMO_RECIPE, ["clean.steps.4={step: drop_boilerplate, phrases: [see your doctor]}"])
    assert recipe.clean.steps[4].params == {"phrases": ["see your doctor"]}
    with pytest.raises(RecipeError, match=r"clean\.steps\.4: step .drop_boilerplate.: phrase: unknown field"):
        load_recipe(DEMO_RECIPE, ["clean.steps.4={step: drop_boilerplate, phrase: x}"])
