"""Runs the step from docs/adding-a-cleaning-step.md exactly as written, so the walkthrough stays true."""

import re
import sys
import types

import pandas as pd
import pytest

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
def test_the_documented_step_is_usable_from_a_recipe_and_its_typos_fail_at_load():
    recipe = load_recipe(DEMO_RECIPE, ["clean.steps.4={step: drop_boilerplate, phrases: [see your doctor]}"])
    assert recipe.clean.steps[4].params == {"phrases": ["see your doctor"]}
    with pytest.raises(RecipeError, match=r"clean\.steps\.4: step .drop_boilerplate.: phrase: unknown field"):
        load_recipe(DEMO_RECIPE, ["clean.steps.4={step: drop_boilerplate, phrase: x}"])
