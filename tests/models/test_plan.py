"""`ftflow plan` reads every decoder family of the matrix from its folder's config, and counts its parameters as
`ftflow inspect` and the model itself do. (Classifiers are not estimated yet: plan refuses them in one line.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from ftcore.models.inspect import inspect_model
from ftcore.planning.plan import make_plan
from ftcore.recipe import load_recipe
from tests.models.matrix import recipe
from tests.models.zoo import FAMILIES, folder, vocabularies_fetched

pytestmark = pytest.mark.skipif(not vocabularies_fetched(), reason="tokenizer files not fetched: make zoo-fetch")
# One family of each layout planning reads differently (GQA, tied embeddings, fused projections, Conv1D, experts);
# tests/models/test_inspect.py counts every family exactly through the same meta model.
GENERATIVE = [family for family in FAMILIES if family.name in ("llama3", "qwen2", "phi3", "gpt2", "mixtral")]


@pytest.mark.parametrize("family", GENERATIVE, ids=[family.name for family in GENERATIVE])
def test_plan_reads_the_family_and_estimates_every_method(family, tmp_path: Path) -> None:
    path = recipe(family, "lora", "sft", tmp_path)
    plan = make_plan(load_recipe(path), path)
    assert plan.model.total_params == inspect_model(folder(family.name)).parameters
    assert plan.recommendation is not None and plan.estimates
