"""Bad recipes and `--set` overrides: `ftflow validate` (and `ftflow run`, which validates first) exits 2 with one
`error:` line per problem naming the recipe file and the field path (or the line, for YAML that cannot be read), and
no traceback."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.bad_input.harness import assert_user_error, invoke, invoke_process, write_recipe

DEMO_DATA = Path(__file__).resolve().parents[2] / "data_recipes" / "demo" / "clinical_qa.jsonl"
SOURCE = {"type": "jsonl", "path": str(DEMO_DATA), "columns": {"prompt": "question", "completion": "answer"}}
VALID = {"data": {"sources": [SOURCE]}}


# method.r beside method.name ia3, which has no rank, whichever of the two the space lists first.
RANK_OF_ONE_METHOD = ("recipe.yaml: tune.space.method.r: with method.name='ia3' and method.r=4:",
                      "add when: {method.name: VALUES} listing them")


def _tune(space: dict, metric: str = "exact_match", direction: str = "maximize", **settings) -> dict:
    """A tune section without a pruner by default: a pruner needs train.eval_steps, which VALID leaves out."""
    return {"space": space, "objectives": [{"metric": metric, "direction": direction}], "pruner": "none", **settings}


EPOCHS = {"train.epochs": {"int": [1, 3]}}
MERGE = {"sources": ["models:/abbrev-a@champion", "models:/abbrev-b/2"]}


@dataclass(frozen=True)
class Case:
    """A recipe (sections to write, or raw bytes) plus overrides, and what each error line must say."""

    fragments: tuple[str, ...]
    sections: dict = field(default_factory=lambda: dict(VALID))
    overrides: tuple[str, ...] = ()
    raw: bytes | None = None
    problems: int = 1

    def write(self, folder: Path) -> Path:
        if self.raw is None:
            return write_recipe(folder, **self.sections)
        path = folder / "recipe.yaml"
        path.write_bytes(self.raw)
        return path


def _yaml(text: str) -> bytes:
    """A raw recipe: a valid head (name and data) followed by `text`."""
    return (f"name: bad-input\ndata:\n  sources:\n    - {{type: jsonl, path: '{DEMO_DATA}'}}\n" + text).encode()


def _sql(url: str) -> dict:
    return {"data": {"sources": [{"type": "sql", "url": url, "query": "SELECT question AS prompt, answer AS "
                                                                      "completion FROM qa"}]}}


CASES = {
    # YAML that cannot be read as a recipe: the file and the line
    "not-utf8": Case(("recipe.yaml: line 5: not UTF-8 (byte 0xe9)",),
                     raw=_yaml("# cafe\n").replace(b"cafe", b"caf\xe9")),
    "nested-5000-deep": Case(("recipe.yaml: line 5, column", "nested deeper than 64 levels"),
                             raw=_yaml("monitor: " + "[" * 5000 + "]" * 5000 + "\n")),
    "duplicate-key": Case(("recipe.yaml: line 6, column 1: duplicate key 'train' (first given on line 5)",),
                          raw=_yaml("train: {epochs: 3}\ntrain: {epochs: 1}\n")),
    "duplicate-nested-key": Case(("recipe.yaml: line 5, column 24: duplicate key 'batch_size'",),
                                 raw=_yaml("train: {batch_size: 4, batch_size: 8}\n")),
    "tabs": Case(("recipe.yaml: line 6, column 1: not valid YAML", "(YAML indents with spaces, not tabs)"),
                 raw=_yaml("train:\n\tepochs: 1\n")),
    "syntax-error": Case(("recipe.yaml: line 6, column 1: not valid YAML",), raw=_yaml("train: {epochs: 1\n")),
    "nul-byte": Case(("recipe.yaml: line 5: not valid YAML: character '\\x00' is not allowed",),
                     raw=_yaml("train: {epochs: 1}\x00\n")),
    "alias-bomb": Case(("recipe.yaml: line", "expands to more than 100,000 values"),
                       raw=_yaml("x: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
                           f"x{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcde", "bcdef",
                                                                                         strict=True)))),
    "empty-file": Case(("recipe.yaml: a recipe is a YAML mapping", "not an empty file"), raw=b""),
    "a-list": Case(("recipe.yaml: a recipe is a YAML mapping", "not a list"), raw=b"- name: bad-input\n"),
    # numbers that pass a bound but overflow later, and wrong types, ranges and names
    "epochs-1e400": Case(("recipe.yaml: train.epochs: Input should be a finite number",),
                         overrides=("train.epochs=1e400",)),
    "learning-rate-nan": Case(("recipe.yaml: train.learning_rate: Input should be a finite number",),
                              overrides=("train.learning_rate=.nan",)),
    "max-steps-beyond-64-bits": Case(("recipe.yaml: train.max_steps: 99999999999999999999 does not fit in 64 bits",),
                                     overrides=("train.max_steps=99999999999999999999",)),
    "seed-numpy-refuses": Case(("recipe.yaml: data.split.seed: Input should be less than 4294967296",),
                               overrides=("data.split.seed=4294967296",)),
    "window-overflows-timedelta": Case(("recipe.yaml: monitor.window: '99999999999d' is longer than 366 days",),
                                       overrides=("monitor.window=99999999999d",)),
    "wrong-type": Case(("recipe.yaml: train.batch_size: Input should be a valid integer",),
                       overrides=("train.batch_size=many",)),
    "unknown-field": Case(("recipe.yaml: train.learning_rat: unknown field",), overrides=("train.learning_rat=1e-4",)),
    "missing-required-field": Case(("recipe.yaml: data: Field required",), sections={}),
    "bad-enum-value": Case(("recipe.yaml: train.lr_scheduler: Input should be", "got 'sideways'"),
                           overrides=("train.lr_scheduler=sideways",)),
    "negative-size": Case(("recipe.yaml: train.batch_size: Input should be greater than or equal to 1",),
                          overrides=("train.batch_size=-8",)),
    "fraction-out-of-range": Case(("recipe.yaml: data.split.validation: Input should be less than 1",),
                                  overrides=("data.split.validation=1.5",)),
    "path-does-not-exist": Case(("recipe.yaml: data.sources.0.path: file not found:", "missing.jsonl"),
                                overrides=("data.sources.0.path=missing.jsonl",)),
    "unknown-cleaning-step": Case(("recipe.yaml: clean.steps.0: unknown cleaning step 'scrub'; available: ",),
                                  overrides=("clean.steps=[{step: scrub}]",)),
    "unknown-step-param": Case(("recipe.yaml: clean.steps.0: step 'drop_empty': min_char: unknown field",),
                               overrides=("clean.steps=[{step: drop_empty, min_char: 1}]",)),
    "unknown-reward-function": Case(
        ("recipe.yaml: reward.functions.0: unknown reward function 'no_such_reward'; available: ",),
        overrides=("task=rl", "reward={functions: [{function: no_such_reward}]}", "train.batch_size=8")),
    "exports-the-method-cannot-give": Case(("recipe.yaml: deploy.exports: method prefix is prompt learning",),
                                           overrides=("method={name: prefix}", "deploy.exports=[merged]")),
    "conflicting-options": Case(("recipe.yaml: train: early_stopping_patience needs eval_steps",),
                                overrides=("train.early_stopping_patience=2",)),
    "literal-sql-password": Case(("recipe.yaml: data.sources.0.url: the URL contains a password",),
                                 sections=_sql("postgresql+psycopg2://reader:hunter2@db.internal/clinical")),
    "unknown-placeholder-kind": Case(("recipe.yaml: data.sources.0.url: the URL contains a password",),
                                     sections=_sql("postgresql+psycopg2://reader:${vault:pg}@db.internal/clinical")),
    "placeholder-for-the-port": Case(("recipe.yaml: data.sources.0.url: the port is not a number",),
                                     sections=_sql("postgresql+psycopg2://reader:${env:PW}@db:${env:PORT}/clinical")),
    "literal-header-secret": Case(
        ("recipe.yaml: data.sources.0.headers: Authorization: a literal value",),
        sections={"data": {"sources": [{"type": "http", "url": "https://api.example.org/rows",
                                        "headers": {"Authorization": "Bearer sk-live-123"}}]}}),
    "token-in-a-url": Case(
        ("recipe.yaml: data.sources.0.url: https://api.example.org/rows: query parameter api_key carries a "
         "credential",),
        sections={"data": {"sources": [{"type": "http", "url": "https://api.example.org/rows?api_key=sk-live-1"}]}}),
    "set-without-equals": Case(("recipe.yaml: --set train.epochs: expected KEY=VALUE",), overrides=("train.epochs",)),
    "set-index-out-of-range": Case(
        ("recipe.yaml: --set data.sources.4.path=x.jsonl: data.sources.4: data.sources is a list of 1",),
        overrides=("data.sources.4.path=x.jsonl",)),
    "set-duplicate-key-in-value": Case(("recipe.yaml: --set train={epochs: 1, epochs: 2}: line 1, column 13: "
                                        "duplicate key 'epochs'",), overrides=("train={epochs: 1, epochs: 2}",)),
    "tune-empty-space": Case(("recipe.yaml: tune.space: ",), sections={**VALID, "tune": _tune({})}),
    "tune-low-above-high": Case(("recipe.yaml: tune.space.train.epochs.int: the range's low 5 must be below its "
                                 "high 1",),
                                sections={**VALID, "tune": _tune({"train.epochs": {"int": [5, 1]}})}),
    "tune-unknown-field": Case(("recipe.yaml: tune.space.train.lr: with train.lr=1e-05: train.lr: unknown field",),
                               sections={**VALID, "tune": _tune({"train.lr": {"log_uniform": [1e-5, 1e-3]}})}),
    "tune-value-refused": Case(("recipe.yaml: tune.space.train.batch_size: with train.batch_size=0:",),
                               sections={**VALID, "tune": _tune({"train.batch_size": {"choice": [8, 0]}})}),
    "tune-field-of-one-method": Case(
        RANK_OF_ONE_METHOD,
        sections={**VALID, "tune": _tune({"method.name": {"choice": ["lora", "ia3"]}, "method.r": {"choice": [4]}})}),
    "tune-field-listed-before-its-method": Case(
        RANK_OF_ONE_METHOD,
        sections={**VALID, "tune": _tune({"method.r": {"choice": [4]}, "method.name": {"choice": ["lora", "ia3"]}})}),
    "tune-metric-not-measured": Case(("recipe.yaml: tune.objectives.0.metric: 'accuracy' is not measured",),
                                     sections={**VALID, "tune": _tune({"train.epochs": {"int": [1, 3]}}, "accuracy")}),
    "tune-direction": Case(("recipe.yaml: tune.objectives.0.direction:",), sections={**VALID, "tune": _tune(
        EPOCHS, direction="upwards")}),
    "tune-pruner-without-evaluations": Case(
        ("recipe.yaml: tune.pruner: median reads the validation loss at each evaluation", "set train.eval_steps"),
        sections={**VALID, "tune": _tune(EPOCHS, pruner="median")}),
    "tune-pruner-of-several-objectives": Case(
        ("recipe.yaml: tune.pruner: hyperband stops trials that fall behind on one objective",),
        sections={**VALID, "train": {"eval_steps": 10}, "tune": {**_tune(EPOCHS, pruner="hyperband"), "objectives": [
            {"metric": "exact_match"}, {"metric": "train_seconds", "direction": "minimize"}]}}),
    "tune-random-sampler-with-startup": Case(
        ("recipe.yaml: tune: sampler_startup_trials: the random sampler draws every trial at random",),
        sections={**VALID, "tune": _tune(EPOCHS, sampler="random", sampler_startup_trials=3)}),
    "tune-without-validation-split": Case(
        ("recipe.yaml: tune: trials are scored on the validation split", "set data.split.validation above 0"),
        sections={"data": {"sources": [SOURCE], "split": {"validation": 0}}, "tune": _tune(EPOCHS)}),
    "onnx-of-a-classifier": Case(
        ("recipe.yaml: deploy.exports: onnx: objective classification's model is not a causal language model",),
        sections={"objective": "classification", "data": {"format": "text_label", "sources": [
            {**SOURCE, "columns": {"text": "question", "label": "answer"}}]}, "deploy": {"exports": ["onnx"]}}),
    "merge-ties-without-density": Case(
        ("recipe.yaml: merge:", "density: combination ties keeps a share of each adapter's weights; give density"),
        sections={"merge": {**MERGE, "combination": "ties"}}),
    "merge-density-it-does-not-use": Case(("recipe.yaml: merge:", "density: only for combination ties"),
                                          sections={"merge": {**MERGE, "density": 0.5}}),
    "merge-weights-not-one-per-source": Case(
        ("recipe.yaml: merge:", "weights: one per source: 2 sources, 3 weights"),
        sections={"merge": {**MERGE, "weights": [1, 1, 1]}}),
    "merge-source-not-registered": Case(
        ("recipe.yaml: merge.sources:", "sources.1: 'adapters/b' is not a registered version; write models:/NAME@"),
        sections={"merge": {**MERGE, "sources": ["models:/a/1", "adapters/b"]}}),
    "merge-with-another-base": Case(("recipe.yaml:", "model: a merge's base is its sources' own; remove the model "
                                     "section"), sections={"merge": MERGE, "model": {"source": "scratch"}}),
    "keep-sources-without-merge": Case(
        ("recipe.yaml: deploy.gate.1 (keep_sources): compares a merge with its sources; only for a recipe with a "
         "merge section",), sections={**VALID, "deploy": {"gate": [{"rule": "beat_champion"},
                                                                   {"rule": "keep_sources"}]}}),
    "every-problem-at-once": Case(
        ("--set data.sources.2.path=x: data.sources.2:", "train.batch_size: Input should be greater",
         "train.epochs: Input should be a finite number"),
        overrides=("data.sources.2.path=x", "train.batch_size=0", "train.epochs=.inf"), problems=3),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_validate_reports_each_problem_in_one_line(case: Case, tmp_path, capfd):
    recipe = case.write(tmp_path)
    args = ["validate", recipe, *(a for item in case.overrides for a in ("--set", item))]
    errors = assert_user_error(invoke(args, capfd), *case.fragments, problems=case.problems)
    for line in errors.splitlines():
        assert line.startswith(f"error: {recipe}: "), line  # every line names the file
    assert "sk-live" not in errors and "hunter2" not in errors  # a refused secret is never echoed


@pytest.mark.parametrize("name", ["epochs-1e400", "duplicate-key", "exports-the-method-cannot-give"])
def test_run_refuses_the_recipe_before_any_stage(name, tmp_path, capfd, ftflow_home):
    case = CASES[name]
    recipe = case.write(tmp_path)
    args = ["run", recipe, *(a for item in case.overrides for a in ("--set", item))]
    assert_user_error(invoke(args, capfd), *case.fragments)
    assert not (ftflow_home / "artifacts").exists()  # nothing ran: the recipe was refused up front


@pytest.mark.parametrize("name", ["not-utf8", "nested-5000-deep"])
def test_the_real_entry_point_prints_one_line(name, tmp_path):
    recipe = CASES[name].write(tmp_path)
    assert_user_error(invoke_process(["validate", recipe]), *CASES[name].fragments)
