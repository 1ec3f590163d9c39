"""The recipe's method section, validated at load: every method loads with its defaults, an option that does not fit
the method is named, and a method whose package is missing is one line."""

from __future__ import annotations

import sys

import pytest
from pydantic import TypeAdapter

from ftcore.errors import RecipeError, UserError
from ftcore.models.config import METHOD_NAMES, MethodConfig, QLoraMethod
from ftcore.models.peft_methods import quantization_config
from ftcore.recipe import load_recipe
from tests.conftest import DEMO_RECIPE


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_every_method_loads_with_its_defaults(name):
    assert load_recipe(DEMO_RECIPE, [f"method={{name: {name}}}"]).method.name == name


def test_a_method_without_name_is_lora():
    lora = TypeAdapter(MethodConfig).validate_python({"name": "lora", "r": 4})
    assert load_recipe(DEMO_RECIPE, ["method={r: 4}"]).method == lora


@pytest.mark.parametrize(("override", "problem"), [
    ("method.num_virtual_tokens=8", "method.num_virtual_tokens: unknown field for method lora"),
    ("method={name: prefix, r: 8}", "method.r: unknown field for method prefix"),
    ("method={name: full, seed: 1}", "method.seed: unknown field for method full"),
    ("method={name: adapter, bottleneck_size: 0}", "method.bottleneck_size: Input should be greater than or equal"),
    ("method={name: prompt, num_virtual_tokens: 0}", "method.num_virtual_tokens: Input should be greater than"),
    ("method={name: lora, dropout: 1.5}", "method.dropout: Input should be less than 1"),
    ("method={name: dora, alpha: 0}", "method.alpha: Input should be greater than or equal to 1"),
    ("method={name: prompt, init: text}", "method: init: text needs init_text"),
    ("method={name: prefix, encoder_hidden_size: 64}", "method: encoder_hidden_size applies only with "
                                                       "prefix_projection: true"),
    ("method={name: ia3, target_modules: [k_proj], feedforward_modules: [down_proj]}",
     "method: feedforward_modules ['down_proj'] are not in target_modules"),
    ("method={name: bogus}", "method.name: must be one of full, lora, qlora, dora, ia3, prefix, prompt, p_tuning, "
                             "adapter, loha, lokr, got 'bogus'"),
])
def test_an_option_that_does_not_fit_the_method_is_named(override, problem):
    with pytest.raises(RecipeError) as err:
        load_recipe(DEMO_RECIPE, [override])
    problems = [p.split(": ", 1)[1] for p in err.value.problems]  # without the recipe's path
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_qlora_without_bitsandbytes_is_one_line_naming_the_method(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # find_spec then reports it absent
    with pytest.raises(RecipeError) as err:
        load_recipe(DEMO_RECIPE, ["method={name: qlora}"])
    assert [p.split(": ", 1)[1] for p in err.value.problems] == [
        "method.name: qlora needs the bitsandbytes package: pip install 'bitsandbytes>=0.50,<0.51'"]
    with pytest.raises(UserError, match=r"^method\.name: qlora needs the bitsandbytes package"):
        quantization_config(QLoraMethod.model_construct())
