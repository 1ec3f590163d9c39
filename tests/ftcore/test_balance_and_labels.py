"""text_label data: headerless TSV sources, the label-stratified split, balancing of the train split only."""

import pandas as pd
import pytest

from ftcore.data.balance import balance_rows
from ftcore.data.clean import clean_balance_stage
from ftcore.data.collect import CollectJob, collect_stage
from ftcore.data.config import BalanceConfig, DataConfig, SplitConfig
from ftcore.data.split import split_rows
from ftcore.errors import DataError, RecipeError
from ftcore.jobs import clean_job
from ftcore.recipe import load_recipe
from tests.conftest import DEMO_RECIPE, REPO

SMS_RECIPE = REPO / "data_recipes" / "recipes" / "shared" / "sms_spam.yaml"


def _labelled(n_a: int, n_b: int) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"t{i}" for i in range(n_a + n_b)], "label": ["a"] * n_a + ["b"] * n_b})


def test_split_is_stratified_by_label_and_deterministic():
    rows = _labelled(90, 10)
    splits = split_rows(rows, SplitConfig(validation=0.1, test=0.2, seed=0))
    assert splits["test"]["label"].value_counts().to_dict() == {"a": 18, "b": 2}
    assert splits["validation"]["label"].value_counts().to_dict() == {"a": 9, "b": 1}
    assert splits["train"]["label"].value_counts().to_dict() == {"a": 63, "b": 7}
    assert splits["test"]["text"].tolist() == split_rows(rows, SplitConfig(validation=0.1, test=0.2))["test"][
        "text"].tolist()
    # Rows keep their input order within a split (trainers shuffle), so splits can be written as a stream.
    assert splits["train"]["text"].tolist() == sorted(splits["train"]["text"], key=lambda t: int(t[1:]))


@pytest.mark.parametrize(("strategy", "expected"), [("oversample", {"a": 70, "b": 70}),
                                                    ("undersample", {"a": 10, "b": 10})])
def test_balancing_resamples_rows_to_equal_classes(strategy, expected):
    result = balance_rows(_labelled(70, 10), BalanceConfig(strategy=strategy), "text_label")
    balanced, metrics = result.frame, result.metrics
    assert result.loss is None
    assert balanced["label"].value_counts().to_dict() == expected
    assert set(balanced["text"]) <= set(_labelled(70, 10)["text"])  # rows are chosen, never invented
    assert metrics["label.b.before"] == 10 and metrics["label.b.after"] == expected["b"]


def test_balancing_one_class_or_a_missing_column_is_a_clear_error():
    with pytest.raises(DataError, match=r"column 'label' has one class \('a'\).*needs at least two"):
        balance_rows(_labelled(5, 0), BalanceConfig(strategy="oversample"), "text_label")
    with pytest.raises(DataError, match=r"balance\.column: no column 'topic'.*columns: text, label"):
        balance_rows(_labelled(5, 5), BalanceConfig(strategy="oversample", column="topic"), "text_label")


def test_headerless_tsv_with_bare_quotes(tmp_path):
    path = tmp_path / "sms.tsv"
    path.write_text('ham\tsee you at "the" place\nspam\tWIN a "prize" now\n')
    cfg = DataConfig(format="text_label", sources=[{"type": "csv", "path": path, "delimiter": "\t",
                                                    "header": False, "quotechar": None,
                                                    "columns": {"label": "0", "text": "1"}}])
    rows = pd.read_parquet(collect_stage(CollectJob(data=cfg, sources={}), tmp_path / "out").splits["all"])
    assert rows[["text", "label"]].values.tolist() == [['see you at "the" place', "ham"], ['WIN a "prize" now', "spam"]]


def test_task_and_format_must_match():
    with pytest.raises(RecipeError, match=r"objective 'sft' trains on data\.format 'prompt_completion' or 'messages', "
                                          r"not 'text_label'"):
        load_recipe(DEMO_RECIPE, ["data.format=text_label"])


def test_sms_spam_recipe_on_real_data_oversampled(tmp_path, shared_data):
    recipe = load_recipe(SMS_RECIPE, ["balance={strategy: oversample, column: label, seed: 0}"])
    collected = collect_stage(CollectJob(data=recipe.data, sources={}), tmp_path / "collected")
    assert collected.rows == 5574
    out = clean_balance_stage(clean_job(recipe, collected), tmp_path / "clean")
    m = out.metrics
    assert m["rows_in"] == m["rows_kept"] + m["rows_quarantined"] == 5574
    train = pd.read_parquet(out.splits["train"])
    assert train["label"].value_counts()["spam"] == train["label"].value_counts()["ham"] == m["label.ham.before"]
    test = pd.read_parquet(out.splits["test"])
    assert 0.10 < (test["label"] == "spam").mean() < 0.16  # test keeps the natural ~13% spam
    card = out.artifacts["data_card"].read_text()
    assert f"**5574 rows in = {m['rows_kept']:.0f} kept + {m['rows_quarantined']:.0f} quarantined.**" in card
    assert f"| spam | {m['label.spam.before']:.0f} | {m['label.spam.after']:.0f} |" in card
    assert f"| drop_duplicates | duplicate of row # | {m['drop_duplicates.rows_quarantined']:.0f} |" in card
