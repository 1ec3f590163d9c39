"""Recipe inputs that used to pass validation or end in a traceback (issue 19, items 12, 13 and 18): YAML that is
not UTF-8, too deep, repeats a key or expands without bound; numbers that overflow in a stage later; overrides that
hid the fields' own problems; exports the method cannot give; placeholders in a SQL URL's host or user; literal
secrets in HTTP headers and their values in the MLflow params; helper models loaded from pickles."""

from __future__ import annotations

import math
import types
from pathlib import Path
from typing import Union, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from ftcore.alignment.rewards import REWARDS
from ftcore.data.sources.config import HttpSource, SqlSource
from ftcore.errors import RecipeError, UserError
from ftcore.evaluation.domain import METRICS
from ftcore.models.config import METHODS
from ftcore.recipe import Recipe, load_recipe
from ftcore.recipe_yaml import MAX_DEPTH, MAX_VALUES
from ftcore.registry import STEPS
from ftcore.schema import INT64_MAX, describe_error

REPO = Path(__file__).resolve().parents[2]
DEMO_DATA = REPO / "data_recipes" / "demo" / "clinical_qa.jsonl"


def _recipe_text(**sections) -> str:
    sources = [{"type": "jsonl", "path": str(DEMO_DATA), "columns": {"prompt": "question", "completion": "answer"}}]
    return yaml.safe_dump({"name": "inputs", "data": {"sources": sources}, **sections}, sort_keys=False)


def _problems(path: Path, overrides: list[str] | None = None) -> list[str]:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    return info.value.problems


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(_recipe_text())
    return path


# ---------------------------------------------------------------------------------------------------------------
# YAML that cannot be a recipe: one line naming the file and the line, never a traceback


def test_a_recipe_that_is_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(_recipe_text().replace("name: inputs", "name: inputs\n# café").encode("latin-1"))
    assert _problems(path) == [f"{path}: line 2: not UTF-8 (byte 0xe9); save the recipe as UTF-8"]


def test_yaml_nested_5000_deep_is_refused_at_its_line(tmp_path):
    path = tmp_path / "recipe.yaml"
    head = _recipe_text()
    path.write_text(head + "monitor: " + "[" * 5000 + "]" * 5000 + "\n")
    [problem] = _problems(path)
    line = head.count("\n") + 1
    column = len("monitor: ") + MAX_DEPTH
    assert problem == f"{path}: line {line}, column {column}: nested deeper than {MAX_DEPTH} levels"


def test_a_duplicate_key_is_refused_naming_both_lines(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(_recipe_text(train={"epochs": 3}) + "train: {epochs: 1}\n")
    text = path.read_text().splitlines()
    first, second = [i + 1 for i, line in enumerate(text) if line.startswith("train:")]
    assert _problems(path) == [f"{path}: line {second}, column 1: duplicate key 'train' (first given on line "
                               f"{first}); YAML would keep only the last: give each key once"]


def test_a_merge_key_may_be_overridden_without_counting_as_a_duplicate(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(_recipe_text() + "x-train: &base {epochs: 2, batch_size: 4}\ntrain: {<<: *base, epochs: 5}\n")
    [problem] = _problems(path)  # x-train itself is an unknown field; the merge is fine
    assert problem == f"{path}: x-train: unknown field; did you mean train?"


@pytest.mark.parametrize(("yaml_text", "expected"), [
    ("a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcdef", "bcdefg", strict=True)),
     f"expands to more than {MAX_VALUES:,} values"),
    ("monitor: &m {retrain: {parameters: {again: *m}}}\n", "an alias refers to the node that contains it"),
], ids=["billion-laughs", "recursive-alias"])
def test_aliases_that_expand_without_bound_are_refused(tmp_path, yaml_text, expected):
    path = tmp_path / "recipe.yaml"
    path.write_text(_recipe_text() + yaml_text)
    [problem] = _problems(path)
    assert problem.startswith(f"{path}: line ") and expected in problem


def test_tabs_and_control_characters_name_the_line(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("name: inputs\ndata:\n\tsources: []\n")
    assert _problems(path) == [f"{path}: line 3, column 1: not valid YAML: while scanning for the next token found "
                               "character '\\t' that cannot start any token (YAML indents with spaces, not tabs)"]
    path.write_text("name: inputs\n\ndata: x\x00\n")
    assert _problems(path) == [f"{path}: line 3: not valid YAML: character '\\x00' is not allowed in YAML text"]


# ---------------------------------------------------------------------------------------------------------------
# Numbers: none that validates can overflow later


def test_epochs_1e400_is_refused_instead_of_overflowing_in_train(recipe):
    assert _problems(recipe, ["train.epochs=1e400"]) == [f"{recipe}: train.epochs: Input should be a finite number"]


def _recipe_models() -> list[type[BaseModel]]:
    """Every model a recipe's values are validated into: the sections with all their variants, and the parameters
    of every registered cleaning step, reward function and domain metric."""
    found: dict[type, None] = {}

    def visit(annotation) -> None:
        for arg in get_args(annotation):
            visit(arg)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and annotation not in found:
            found[annotation] = None
            for field in annotation.model_fields.values():
                visit(field.annotation)

    for root in (Recipe, *METHODS, *(s.params for s in STEPS.entries().values()),
                 *(r.params for r in REWARDS.entries().values()), *(m.params for m in METRICS.entries().values())):
        visit(root)
    return list(found)


def _numeric_fields() -> list[tuple[type[BaseModel], str, type]]:
    fields = []
    for model in _recipe_models():
        for name, field in model.model_fields.items():
            options = get_args(field.annotation) if get_origin(field.annotation) in (Union, types.UnionType) else (
                field.annotation,)
            fields += [(model, name, kind) for kind in (int, float) if kind in options]
    return fields


NUMERIC_FIELDS = _numeric_fields()
OUT_OF_RANGE = {float: [math.inf, -math.inf, math.nan, "1e400"], int: [INT64_MAX + 1, -INT64_MAX - 2]}


def test_the_sweep_sees_the_recipes_numbers():
    names = {f"{model.__name__}.{name}" for model, name, _ in NUMERIC_FIELDS}
    assert {"TrainConfig.epochs", "TrainConfig.max_steps", "LoraMethod.r", "HttpSource.timeout_s",
            "DropNearDuplicatesParams.seed", "RewardFunctionSpec.weight", "Objectives.max_error_rate"} <= names
    assert len(names) > 100


@pytest.mark.parametrize(("model", "name", "kind"), NUMERIC_FIELDS,
                         ids=[f"{m.__name__}.{n}" for m, n, _ in NUMERIC_FIELDS])
def test_no_numeric_field_accepts_infinity_nan_or_more_than_64_bits(model, name, kind, tmp_path):
    for value in OUT_OF_RANGE[kind]:
        with pytest.raises(ValidationError) as info:
            model.model_validate({name: value}, context={"base_dir": tmp_path})
        assert any(err["loc"] == (name,) for err in info.value.errors()), (value, info.value.errors())


def test_numbers_inside_untyped_values_are_checked_too(recipe):
    problems = _problems(recipe, ["monitor.retrain={parameters: {overrides: {a: [1, .inf]}}}"])
    assert problems == [f"{recipe}: monitor.retrain.parameters: inf is not a finite number (at overrides.a.1)"]


@pytest.mark.parametrize("override", ["train.seed=4294967296", "data.split.seed=-1", "method.seed=99999999999"])
def test_seeds_fit_what_numpy_accepts(recipe, override):
    [problem] = _problems(recipe, [override])
    assert problem.startswith(f"{recipe}: {override.split('=')[0]}: Input should be")


@pytest.mark.parametrize(("override", "field"), [
    ("stages.retry_delay_s=1e300", "stages.retry_delay_s"), ("stages.retries=100000000", "stages.retries"),
    ("monitor.window=99999999999d", "monitor.window"), ("monitor.timeout_s=1e300", "monitor.timeout_s"),
    ("train.epochs=1e300", "train.epochs"),
])
def test_waits_retries_and_epochs_that_would_overflow_or_never_end_are_refused(recipe, override, field):
    [problem] = _problems(recipe, [override])
    assert problem.startswith(f"{recipe}: {field}: ")


# ---------------------------------------------------------------------------------------------------------------
# Overrides and checks across sections


def test_a_bad_override_path_is_reported_with_the_other_problems(recipe):
    problems = _problems(recipe, ["data.sources.3.path=x.jsonl", "train.batch_size=0", "name.first=1"])
    assert problems == [  # the overrides' own problems first, then the recipe's fields
        f"{recipe}: --set data.sources.3.path=x.jsonl: data.sources.3: data.sources is a list of 1: give an index from "
        "0 to 0",
        f"{recipe}: --set name.first=1: name is a single value (str), not a mapping or list, so it has no field "
        "'first'",
        f"{recipe}: train.batch_size: Input should be greater than or equal to 1",
    ]


def test_an_override_path_deeper_than_a_recipe_nests_is_refused(recipe):
    path = "monitor.retrain.parameters." + ".".join(["a"] * 5000)
    assert _problems(recipe, [f"{path}=1"]) == [
        f"{recipe}: --set {path}=1: a path of 5003 fields; recipes nest at most {MAX_DEPTH} levels"]


def test_an_override_value_with_a_duplicate_key_is_refused(recipe):
    assert _problems(recipe, ["train={epochs: 1, epochs: 2}"]) == [
        f"{recipe}: --set train={{epochs: 1, epochs: 2}}: line 1, column 13: duplicate key 'epochs' (first given on "
        "line 1); YAML would keep only the last: give each key once"]


@pytest.mark.parametrize(("method", "kind", "expected"), [
    ("prefix", "merged", "method prefix is prompt learning: its virtual tokens cannot be merged"),
    ("adapter", "merged_bf16", "method adapter (a bottleneck adapter) cannot be merged"),
    ("full", "adapter", "method full has no adapter"),
    ("dora", "adapter", "method dora: the adapter alone cannot be loaded back"),
])
def test_exports_the_method_cannot_give_are_refused_by_validate(recipe, method, kind, expected):
    [problem] = _problems(recipe, [f"method={{name: {method}}}", f"deploy.exports=[{kind}]"])
    assert problem.startswith(f"{recipe}: deploy.exports: {expected}")
    load_recipe(recipe, [f"method={{name: {method}}}", "deploy.exports=[int8]"])  # every method gives int8


# ---------------------------------------------------------------------------------------------------------------
# Secrets: SQL URL placeholders, HTTP headers


def _user_message(model: type[BaseModel], raw: dict) -> str:
    """The one problem of `raw` as `ftflow validate` prints it."""
    with pytest.raises(ValidationError) as info:
        model.model_validate(raw)
    [message] = [describe_error(err) for err in info.value.errors()]
    return message


@pytest.fixture
def pg_env(monkeypatch):
    monkeypatch.setenv("FT_PGUSER", "reader")
    monkeypatch.setenv("FT_PGPASSWORD", "p@ss/:w%rd")
    monkeypatch.setenv("FT_PGHOST", "127.0.0.1")
    monkeypatch.setenv("FT_PGDATABASE", "clinical")


def test_placeholders_may_stand_for_the_user_host_and_database_of_a_sql_url(pg_env):
    from ftcore.data.sources import read_source

    url = "postgresql+psycopg2://${env:FT_PGUSER}:${env:FT_PGPASSWORD}@${env:FT_PGHOST}:1/${env:FT_PGDATABASE}"
    source = SqlSource(type="sql", url=url, query="SELECT 1")
    with pytest.raises(UserError) as info:  # port 1: nothing listens, so the resolved host is what was tried
        list(read_source(source, 10))
    message = str(info.value)
    assert message.startswith("data.sources (sql postgresql+psycopg2://reader:***@127.0.0.1:1/clinical): query "
                              'failed: connection to server at "127.0.0.1", port 1 failed')
    assert "p@ss" not in message


@pytest.mark.parametrize(("url", "expected"), [
    ("postgresql+psycopg2://reader:hunter2@db/clinical", "the URL contains a password"),
    ("postgresql+psycopg2://reader@db/clinical?password=hunter2", "query parameter 'password' holds a literal"),
    ("postgresql+psycopg2://reader:${env:X}@db:${env:PORT}/clinical", "the port is not a number"),
])
def test_sql_urls_with_literal_credentials_or_a_port_placeholder_are_refused(url, expected):
    message = _user_message(SqlSource, {"type": "sql", "url": url, "query": "SELECT 1"})
    assert message.startswith(f"url: {expected}") and "hunter2" not in message


@pytest.mark.parametrize("headers", [{"Authorization": "Bearer sk-live-123"}, {"X-Api-Key": "sk-live-123"},
                                     {"Cookie": "session=sk-live-123"}, {"Authorization": "Bearer ${env:T}x"}])
def test_a_literal_header_value_is_refused_without_echoing_it(headers):
    message = _user_message(HttpSource, {"type": "http", "url": "https://api.example.org/rows", "headers": headers})
    assert message.startswith(f"headers: {next(iter(headers))}: a literal value") and "sk-live" not in message


@pytest.mark.parametrize("url", ["https://user:sk-live-123@api.example.org/rows",
                                 "https://api.example.org/rows?api_key=sk-live-123"])
def test_credentials_in_an_http_url_are_refused(url):
    message = _user_message(HttpSource, {"type": "http", "url": url})
    assert message.startswith("url: https://api.example.org/rows: ") and "sk-live" not in message


def test_header_values_never_reach_the_mlflow_params_or_the_logged_recipe(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from ftcore import tracking

    path = tmp_path / "recipe.yaml"
    sources = [{"type": "http", "url": "https://api.example.org/rows", "format": "json",
                "headers": {"Authorization": "Bearer ${secret:api-token}", "Accept": "application/json"}}]
    path.write_text(yaml.safe_dump({"name": "inputs", "data": {"sources": sources}}))
    recipe = load_recipe(path)
    assert recipe.data.sources[0].headers["Authorization"].get_secret_value() == "Bearer ${secret:api-token}"
    run_id = tracking.start_pipeline_run("inputs", "inputs-run", recipe.model_dump(mode="json"), {})
    params = MlflowClient(tracking.tracking_uri()).get_run(run_id).data.params
    assert params["data.sources.0.headers.Authorization"] == params["data.sources.0.headers.Accept"] == "**********"
    logged = Path(MlflowClient(tracking.tracking_uri()).download_artifacts(run_id, "recipe.yaml", str(tmp_path)))
    assert "api-token" not in logged.read_text() and "application/json" not in logged.read_text()
    assert "api-token" not in repr(recipe)


# ---------------------------------------------------------------------------------------------------------------
# Helper models load safetensors only


@pytest.fixture(scope="module")
def pickled_classifier(tmp_path_factory) -> Path:
    """A tiny BERT classifier saved as pytorch_model.bin (a pickle) with the MiniLM tokenizer."""
    import shutil

    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from ftcore.data.embeddings import MINILM
    from ftcore.models.load import packaged_model

    folder = tmp_path_factory.mktemp("pickled")
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, num_labels=2)
    config.save_pretrained(folder)
    torch.save(BertForSequenceClassification(config).state_dict(), folder / "pytorch_model.bin")
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(packaged_model(MINILM) / name, folder / name)
    assert (folder / "pytorch_model.bin").is_file() and not list(folder.glob("*.safetensors"))
    return folder


def test_the_toxicity_classifier_refuses_pickled_weights(pickled_classifier):
    from ftcore.safety.toxicity import classifier_scores

    with pytest.raises(UserError) as info:
        classifier_scores(["hello"], model_path=str(pickled_classifier))
    assert str(info.value).startswith(f"toxicity scorer classifier model_path: cannot load the model from "
                                      f"'{pickled_classifier}'")
    assert "\n" not in str(info.value)


def test_the_sentence_encoder_refuses_pickled_weights(pickled_classifier):
    from ftcore.data.embeddings import embed_texts

    with pytest.raises(UserError, match=r"^balance.embedding_model: cannot load the model from .*safetensors"):
        embed_texts(["hello"], pickled_classifier)
