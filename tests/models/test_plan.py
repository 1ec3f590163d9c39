"""`ftflow plan` reads every family of the matrix from its folder's config, as the model init builds on it: a
decoder family as its causal LM, counted as `ftflow inspect` and the model itself count it; an encoder, and a decoder
saved with a classification head, as the classifier objective classification trains (one output per class of the
data), counted as `load_model(folder, classes)` loads it."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftcore.models.config import LoraMethod
from ftcore.models.inspect import inspect_model
from ftcore.models.load import load_model
from ftcore.models.meta import count_params
from ftcore.models.peft_methods import apply_method
from ftcore.planning.plan import make_plan
from ftcore.recipe import load_recipe
from tests.models.matrix import METHOD_OPTIONS, recipe
from tests.models.zoo import FAMILIES, folder, vocabularies_fetched

pytestmark = pytest.mark.skipif(not vocabularies_fetched(), reason="tokenizer files not fetched: make zoo-fetch")
# One family of each layout planning reads differently (GQA, tied embeddings, fused projections, Conv1D, experts);
# tests/models/test_inspect.py counts every family exactly through the same meta model.
GENERATIVE = [family for family in FAMILIES if family.name in ("llama3", "qwen2", "phi3", "gpt2", "mixtral")]
# The families whose only objective is classification (tests/models/matrix.py: objectives_of).
CLASSIFIERS = [family for family in FAMILIES if family.kind == "encoder" or family.head]


@pytest.mark.parametrize("family", GENERATIVE, ids=[family.name for family in GENERATIVE])
def test_plan_reads_the_family_and_estimates_every_method(family, tmp_path: Path) -> None:
    path = recipe(family, "lora", "sft", tmp_path)
    plan = make_plan(load_recipe(path), path)
    assert plan.model.total_params == inspect_model(folder(family.name)).parameters
    assert plan.recommendation is not None and plan.estimates


@pytest.mark.parametrize("family", CLASSIFIERS, ids=[family.name for family in CLASSIFIERS])
def test_plan_reads_the_classifier_and_counts_it_as_init_loads_it(family, tmp_path: Path) -> None:
    path = recipe(family, "lora", "classification", tmp_path)
    plan = make_plan(load_recipe(path), path)
    assert plan.data.classes == ["ham", "spam"] and plan.model.num_labels == 2
    loaded = load_model(folder(family.name), classes=plan.data.classes)
    assert plan.model.total_params == count_params(loaded)[1]
    # LoRA trains its adapters and the head, which PEFT trains whole
    assert plan.estimates["lora"].trainable == count_params(apply_method(loaded, LoraMethod(
        **METHOD_OPTIONS["lora"])))[0]
    assert "few_shot" not in plan.estimates and plan.recommendation.method in plan.estimates
