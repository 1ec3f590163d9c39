"""Canonical formats, unusable values, malformed CSV rows, empty sources, fixed test sets, batches."""

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from ftcore.data.clean import CleanJob, clean_balance_stage
from ftcore.data.collect import CollectJob, collect_stage
from ftcore.data.config import BalanceConfig, CleanConfig, DataConfig, StepSpec
from ftcore.errors import DataError, RecipeError
from ftcore.jobs import clean_job
from ftcore.recipe import load_recipe
from ftcore.registry import STEPS, Batch, StepParams, StepResult, cleaning_step
from tests.conftest import DEMO_RECIPE, REPO


def _jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _collect(tmp_path: Path, fmt: str, **source) -> tuple[pd.DataFrame, pd.DataFrame]:
    out = collect_stage(CollectJob(data=DataConfig(format=fmt, sources=[source]), sources={}), tmp_path / "collected")
    return pd.read_parquet(out.splits["all"]), pd.read_parquet(out.artifacts["quarantine"])


def test_chat_messages_in_sharegpt_or_openai_form_become_canonical_json(tmp_path):
    path = _jsonl(tmp_path / "chats.jsonl", [
        {"conversations": [{"from": "human", "value": "What is  BP?"}, {"from": "gpt", "value": "Blood pressure."}]},
        {"conversations": [{"role": "user", "content": "Mail me at a.b@example.org"},
                           {"role": "assistant", "content": "Sure."}]},
        {"conversations": [{"role": "user", "content": "Hello?"}]},                   # nothing to learn from
        {"conversations": [{"role": "narrator", "content": "x"}, {"role": "assistant", "content": "y"}]},
        {"conversations": "not a chat"},
    ])
    rows, bad = _collect(tmp_path, "messages", type="jsonl", path=path, columns={"messages": "conversations"})
    assert json.loads(rows["messages"][0]) == [{"role": "user", "content": "What is  BP?"},
                                               {"role": "assistant", "content": "Blood pressure."}]
    assert bad["source_row"].tolist() == [3, 4, 5]
    assert bad["reason"].tolist() == [
        "messages: no assistant message",
        "messages: message 0 has role 'narrator'; expected one of assistant, system, tool, user",
        "messages: not a JSON list of messages"]
    # Text steps rewrite each message's content and leave a valid chat behind.
    steps = [StepSpec(step="normalize_whitespace"), StepSpec(step="redact_pii")]
    from ftcore.data.clean import run_steps

    kept, _, _ = run_steps(rows, steps, ["messages"])
    assert [m["content"] for m in json.loads(kept["messages"][0])] == ["What is BP?", "Blood pressure."]
    assert json.loads(kept["messages"][1])[0]["content"] == "Mail me at <EMAIL>"


def test_hh_rlhf_dialogues_split_into_prompt_chosen_rejected(tmp_path, shared_data):
    src = shared_data / "hh-rlhf_harmless-base_test.jsonl.gz"
    rows, bad = _collect(tmp_path, "preference", type="jsonl", path=src, derive_prompt=True)
    with gzip.open(src, "rt") as f:
        originals = [json.loads(line) for line in f if line.strip()]
    assert len(rows) + len(bad) == len(originals) == 2312
    assert rows["prompt"].str.endswith("\n\nAssistant:").all()
    assert rows["prompt"].str.startswith("Human:").all()
    for row in rows.head(50).itertuples():
        original = originals[row.source_row - 1]
        assert original["chosen"].strip().endswith(row.chosen) and original["rejected"].strip().endswith(row.rejected)
        assert original["chosen"].lstrip().startswith(row.prompt)
    # A few real pairs run on into further turns inside an answer: quarantined, with the reason.
    assert not rows["chosen"].str.contains("\n\nAssistant:|\n\nHuman:").any()
    assert 0 < len(bad) < 20 and bad["reason"].str.contains("runs on into further dialogue turns").all()


def test_values_of_the_wrong_type_are_quarantined_with_the_column(tmp_path):
    path = _jsonl(tmp_path / "rows.jsonl", [
        {"q": "ok?", "a": "yes"}, {"q": ["a", "list"], "a": "x"}, {"q": 42, "a": 3.5}, {"q": "none", "a": None}])
    rows, bad = _collect(tmp_path, "prompt_completion", type="jsonl", path=path,
                         columns={"prompt": "q", "completion": "a"})
    assert rows[["prompt", "completion"]].values.tolist() == [["ok?", "yes"], ["42", "3.5"], ["none", ""]]
    assert bad[["source_row", "reason"]].values.tolist() == [[2, "prompt: expected text, got a list"]]
    assert json.loads(bad["raw"][0]) == {"q": ["a", "list"], "a": "x"}


def test_a_missing_label_is_quarantined_and_numeric_labels_are_text(tmp_path):
    path = _jsonl(tmp_path / "rows.jsonl", [{"t": "a", "y": 1}, {"t": "b", "y": None}, {"t": "c", "y": 0}])
    rows, bad = _collect(tmp_path, "text_label", type="jsonl", path=path, columns={"text": "t", "label": "y"})
    assert rows["label"].tolist() == ["1", "0"]
    assert bad["reason"].tolist() == ["label: missing label"]


def test_malformed_csv_rows_are_quarantined_with_their_line_number(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text('prompt,completion\nWhat is MI?,myocardial infarction\nbroken,row,with,extra\n'
                    '"multi\nline",answer\nlast,one\n')
    rows, bad = _collect(tmp_path, "prompt_completion", type="csv", path=path)
    assert rows["prompt"].tolist() == ["What is MI?", "multi\nline", "last"]
    assert rows["source_row"].tolist() == [2, 4, 6]
    assert bad[["source_row", "reason", "raw"]].values.tolist() == [
        [3, "4 fields, expected 2", "broken,row,with,extra"]]


def test_an_empty_source_is_an_error_naming_it(tmp_path):
    full = _jsonl(tmp_path / "full.jsonl", [{"prompt": "a", "completion": "b"}])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    cfg = DataConfig(sources=[{"type": "jsonl", "path": full}, {"type": "jsonl", "path": empty}])
    with pytest.raises(DataError, match=r"data\.sources\[1\] \(.*empty\.jsonl\): no rows"):
        collect_stage(CollectJob(data=cfg, sources={}), tmp_path / "out")
    assert not (tmp_path / "out").exists()  # no partial dataset published


def test_extra_mapped_columns_are_kept_for_balancing_by_category(tmp_path, shared_data):
    src = shared_data / "medquad_sample_every16.jsonl"
    rows, _ = _collect(tmp_path, "prompt_completion", type="jsonl", path=src,
                       columns={"prompt": "question", "completion": "answer", "category": "qtype"})
    assert rows["category"].value_counts()["information"] == 263  # the README's count for MedQuAD's qtypes


def test_test_sources_form_the_test_split_and_their_duplicates_leave_train(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(40)])
    test = _jsonl(tmp_path / "test.jsonl", [{"prompt": "q3", "completion": "a3"},
                                            {"prompt": "fixed", "completion": "x"}])
    data = DataConfig(sources=[{"type": "jsonl", "path": train}], test_sources=[{"type": "jsonl", "path": test}],
                      split={"validation": 0.1})
    collected = collect_stage(CollectJob(data=data, sources={}), tmp_path / "collected")
    out = clean_balance_stage(CleanJob(collected=collected, data=data, clean=CleanConfig(), balance=BalanceConfig()),
                              tmp_path / "clean")
    splits = {name: pd.read_parquet(path) for name, path in out.splits.items()}
    assert splits["test"]["raw_prompt"].tolist() == ["q3", "fixed"]
    assert "q3" not in set(splits["train"]["raw_prompt"]) | set(splits["validation"]["raw_prompt"])
    quarantine = pd.read_parquet(out.artifacts["quarantine"])
    assert quarantine[["source", "source_row", "step"]].values.tolist() == [["train.jsonl", 4, "drop_duplicates"]]
    assert len(splits["validation"]) == 3 and len(splits["train"]) == 36


def test_test_sources_and_a_test_fraction_conflict():
    with pytest.raises(RecipeError, match=r"data: .*test_sources supplies the test set: remove data\.split\.test"):
        demo = REPO / "data_recipes" / "demo" / "clinical_qa.jsonl"
        load_recipe(DEMO_RECIPE, [f"data.test_sources=[{{type: jsonl, path: {demo}}}]", "data.split.test=0.2"])


def test_steps_see_bounded_batches_and_dedup_spans_them(tmp_path):
    """Rows flow in batches of batch_rows; a duplicate in a later batch is still caught (stateful step)."""
    seen_sizes = []

    @cleaning_step("record_batch_sizes_for_test")
    def record(batch: Batch, _: StepParams) -> StepResult:
        seen_sizes.append(len(batch.frame))
        return StepResult.keep_all(batch.frame)

    try:
        rows = [{"prompt": f"q{i % 45}", "completion": "a"} for i in range(50)]  # rows 45-49 repeat rows 0-4
        data = DataConfig(sources=[{"type": "jsonl", "path": _jsonl(tmp_path / "r.jsonl", rows)}])
        collected = collect_stage(CollectJob(data=data, sources={}), tmp_path / "collected", batch_rows=8)
        clean = CleanConfig(steps=[StepSpec(step="record_batch_sizes_for_test"), StepSpec(step="drop_duplicates")])
        out = clean_balance_stage(CleanJob(collected=collected, data=data, clean=clean, balance=BalanceConfig()),
                                  tmp_path / "clean", batch_rows=8)
    finally:
        STEPS.unregister("record_batch_sizes_for_test")
    assert max(seen_sizes) == 8 and sum(seen_sizes) == 50
    quarantine = pd.read_parquet(out.artifacts["quarantine"])
    assert quarantine["reason"].tolist() == [f"duplicate of row {i}" for i in range(5)]
    assert out.metrics["rows_kept"] == 45


def test_batching_does_not_change_the_result(tmp_path, shared_data):
    recipe = load_recipe(REPO / "data_recipes" / "recipes" / "shared" / "medquad_qa.yaml")
    results = []
    for batch_rows in (10_000, 97):
        collected = collect_stage(CollectJob(data=recipe.data, sources={}), tmp_path / f"c{batch_rows}", batch_rows)
        out_dir = tmp_path / f"o{batch_rows}"
        results.append(clean_balance_stage(clean_job(recipe, collected), out_dir, batch_rows))
    assert results[0].content_hash == results[1].content_hash
    assert results[0].metrics == results[1].metrics


def test_a_last_batch_of_only_malformed_lines_is_quarantined(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": "d"}\n{broken\n[1]\n')
    out = collect_stage(CollectJob(data=DataConfig(sources=[{"type": "jsonl", "path": path}]), sources={}),
                        tmp_path / "out", batch_rows=2)
    assert out.metrics == {"rows_in": 4, "rows_kept": 2, "rows_quarantined": 2, "sources": 1}


def test_a_source_whose_every_row_has_the_wrong_type_fails_in_one_line(tmp_path):
    path = _jsonl(tmp_path / "rows.jsonl", [{"prompt": ["a"], "completion": "b"},
                                            {"prompt": {"x": 1}, "completion": "c"}])
    with pytest.raises(DataError, match=r"none of the 2 rows read could be used \(first problem: prompt: expected "
                                        r"text, got a list\); check the sources' columns and data\.format$"):
        collect_stage(CollectJob(data=DataConfig(sources=[{"type": "jsonl", "path": path}]), sources={}),
                      tmp_path / "out")
    assert not (tmp_path / "out").exists()
