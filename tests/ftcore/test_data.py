from pathlib import Path

import pandas as pd
import pytest

from ftcore.data.clean import CleanJob, apply_steps, clean_balance_stage, plan_steps, run_steps
from ftcore.data.collect import CollectJob, collect_stage
from ftcore.data.config import BalanceConfig, CleanConfig, DataConfig, SplitConfig, StepSpec
from ftcore.data.split import split_rows
from ftcore.errors import DataError
from ftcore.jobs import clean_job
from ftcore.registry import STEPS, Batch, StepResult
from tests.conftest import DEMO_RECIPE


def _data_config(path: Path, **columns) -> DataConfig:
    return DataConfig(sources=[{"type": path.suffix.lstrip("."), "path": path, "columns": columns}])


def test_collect_quarantines_malformed_jsonl_lines_with_their_line_number(tmp_path):
    src = tmp_path / "rows.jsonl"
    src.write_text('{"q": "a", "a": "b"}\n{not json\n\n["list"]\n{"q": "c", "a": "d"}\n')
    out = collect_stage(CollectJob(data=_data_config(src, prompt="q", completion="a"), sources={}), tmp_path / "out")
    rows = pd.read_parquet(out.splits["all"])
    bad = pd.read_parquet(out.artifacts["quarantine"])
    assert rows[["prompt", "completion"]].values.tolist() == [["a", "b"], ["c", "d"]]
    assert rows["source_row"].tolist() == [1, 5]
    assert bad["source_row"].tolist() == [2, 4]
    assert bad["reason"].str.startswith("invalid JSON").tolist() == [True, False]
    assert set(bad["step"]) == {"collect"}
    assert out.metrics == {"rows_in": 4, "rows_kept": 2, "rows_quarantined": 2, "sources": 1}


def test_collect_names_missing_columns_and_what_is_available(tmp_path):
    src = tmp_path / "rows.csv"
    src.write_text("question,reply\nwhat,that\n")
    expected = r"missing completion \(from column 'answer'\).*columns found: question, reply"
    with pytest.raises(DataError, match=expected):
        collect_stage(CollectJob(data=_data_config(src, prompt="question", completion="answer"), sources={}),
                      tmp_path / "out")


@pytest.mark.parametrize("encoding", ["auto", "utf-8"])
def test_collect_reports_undecodable_bytes_with_line_and_offset(tmp_path, encoding):
    """A UTF-8 file (é decodes) with one broken byte: detection keeps UTF-8 and the error points at the byte."""
    src = tmp_path / "rows.jsonl"
    data = '{"prompt": "café", "completion": "fine"}\n'.encode() + b'{"prompt": "\xff\xfe"}\n'
    src.write_bytes(data)
    offset = data.index(b"\xff")
    cfg = DataConfig(sources=[{"type": "jsonl", "path": src, "encoding": encoding}])
    with pytest.raises(DataError, match=rf"rows\.jsonl: line 2, byte offset {offset}: not utf-8"):
        collect_stage(CollectJob(data=cfg, sources={}), tmp_path / "out")


def test_collect_detects_a_legacy_encoding(tmp_path):
    src = tmp_path / "rows.csv"
    src.write_bytes("prompt,completion\nQu'est-ce que la fièvre?,Une température élevée du corps\n".encode("cp1252"))
    rows = pd.read_parquet(collect_stage(CollectJob(data=_data_config(src), sources={}),
                                         tmp_path / "out").splits["all"])
    assert rows[["prompt", "completion"]].values.tolist() == [["Qu'est-ce que la fièvre?",
                                                                "Une température élevée du corps"]]


def test_collected_content_hash_follows_content_not_location(tmp_path):
    """Rows carry their source's file name, so the hash follows the content and the name, not the folder."""
    a, b = tmp_path / "one" / "rows.jsonl", tmp_path / "two" / "rows.jsonl"
    for path in (a, b):
        path.parent.mkdir()
        path.write_text('{"prompt": "x", "completion": "y"}\n')
    hash_a = collect_stage(CollectJob(data=_data_config(a), sources={}), tmp_path / "oa").content_hash
    assert collect_stage(CollectJob(data=_data_config(b), sources={}), tmp_path / "ob").content_hash == hash_a
    b.write_text('{"prompt": "x", "completion": "z"}\n')
    assert collect_stage(CollectJob(data=_data_config(b), sources={}), tmp_path / "ob").content_hash != hash_a


def _frame(pairs):
    return pd.DataFrame(pairs, columns=["prompt", "completion"])


def test_steps_account_for_every_row_with_a_reason():
    rows = _frame([
        ("What is MI?", "myocardial infarction"),
        ("  What is   MI? ", "<b>myocardial infarction</b>"),  # duplicate once cleaned
        ("What is BP?", "   "),                                # empty answer
        ("What is BP?", "blood pressure"),
    ])
    steps = [StepSpec(step=s) for s in ("strip_markup", "normalize_whitespace", "drop_empty", "drop_duplicates")]
    kept, quarantine, metrics = run_steps(rows, steps, ["prompt", "completion"])
    assert len(kept) + len(quarantine) == len(rows)
    assert kept["completion"].tolist() == ["myocardial infarction", "blood pressure"]
    assert [metrics[f"{s.step}.rows_quarantined"] for s in steps] == [0, 0, 1, 1]
    assert metrics["drop_duplicates.rows_in"] == 3 and metrics["drop_duplicates.rows_kept"] == 2
    reasons = dict(zip(quarantine["step"], quarantine["reason"], strict=True))
    assert reasons == {"drop_empty": "empty completion", "drop_duplicates": "duplicate of row 0"}


def test_a_batch_emptied_by_a_step_skips_the_steps_after_it():
    """Found by bench/scale_out.py --copies: a part made only of copies of earlier parts is empty after exact
    deduplication, and near-duplicate detection failed on the empty batch."""
    steps = [StepSpec(step="drop_duplicates"), StepSpec(step="drop_near_duplicates"), StepSpec(step="drop_empty")]
    plan, states = plan_steps(steps), {}
    first = _frame([("What is MI?", "myocardial infarction is a heart attack"), ("What is BP?", "blood pressure")])
    apply_steps(first, plan, ["prompt", "completion"], states)
    again = first.set_axis([2, 3])  # the same rows again, as the next part
    kept, quarantine, counts = apply_steps(again, plan, ["prompt", "completion"], states)
    assert kept.empty and len(quarantine) == 2
    assert counts == {"drop_duplicates": (2, 0, 2), "drop_near_duplicates": (0, 0, 0), "drop_empty": (0, 0, 0)}


def test_a_step_that_loses_rows_is_caught(monkeypatch):
    from ftcore import registry

    @registry.cleaning_step("lossy_for_test")
    def lossy(batch: Batch, _) -> StepResult:
        return StepResult.keep_all(batch.frame.iloc[1:])

    try:
        with pytest.raises(DataError, match=r"clean.steps.0 \(lossy_for_test\).*account for every row"):
            run_steps(_frame([("a", "b"), ("c", "d")]), [StepSpec(step="lossy_for_test")], ["prompt", "completion"])
    finally:
        registry.STEPS.unregister("lossy_for_test")


def test_data_engineers_steps_are_discovered_through_the_entry_point():
    steps = STEPS.entries()
    assert steps["drop_short"].module == "data_recipes.steps.drop_short"
    assert {"strip_markup", "normalize_whitespace", "drop_empty", "drop_duplicates"} <= set(steps)


def test_split_is_deterministic_disjoint_and_complete():
    rows = _frame([(f"q{i}", f"a{i}") for i in range(50)])
    cfg = SplitConfig(validation=0.1, test=0.2, seed=3)
    first, again = split_rows(rows, cfg), split_rows(rows, cfg)
    assert {k: v["prompt"].tolist() for k, v in first.items()} == {k: v["prompt"].tolist() for k, v in again.items()}
    assert [len(first[s]) for s in ("train", "validation", "test")] == [35, 5, 10]
    assert sorted(p for v in first.values() for p in v["prompt"]) == sorted(rows["prompt"])
    other = split_rows(rows, SplitConfig(validation=0.1, test=0.2, seed=4))
    assert other["test"]["prompt"].tolist() != first["test"]["prompt"].tolist()


def test_the_clean_stage_on_the_demo_data_removes_the_messy_rows(tmp_path):
    from ftcore.recipe import load_recipe

    recipe = load_recipe(DEMO_RECIPE)
    collected = collect_stage(CollectJob(data=recipe.data, sources={}), tmp_path / "collected")
    out = clean_balance_stage(clean_job(recipe, collected), tmp_path / "clean")
    m = out.metrics
    assert m["rows_in"] == collected.rows == m["rows_kept"] + m["rows_quarantined"]
    assert m["drop_duplicates.rows_quarantined"] > 0 and m["drop_empty.rows_quarantined"] > 0
    for step in ("strip_markup", "normalize_whitespace", "drop_empty", "drop_short", "drop_duplicates"):
        assert m[f"{step}.rows_in"] == m[f"{step}.rows_kept"] + m[f"{step}.rows_quarantined"]
    dataset = pd.read_parquet(out.artifacts["dataset"])
    assert len(dataset) == m["rows_kept"] and set(dataset["split"]) == {"train", "validation", "test"}
    card = out.artifacts["data_card"].read_text()
    assert "# Data card: clinical_qa.jsonl" in card
    assert f"| drop_empty | {m['drop_empty.rows_in']:.0f} | {m['drop_empty.rows_kept']:.0f} | " in card
    assert "## Length of `raw_completion` in the train split (characters)" in card
    train = pd.read_parquet(out.splits["train"])
    assert train["prompt"].str.startswith("Question: ").all() and train["completion"].str.startswith(" ").all()
    assert not train["raw_completion"].str.contains("<").any()


def test_a_split_left_empty_is_written_and_the_dataset_still_joins_the_splits(tmp_path):
    """data.split.validation 0: the empty validation file's columns have no rows to take types from, and must not
    stop the splits being joined into dataset.parquet (they did: prompt as double against string)."""
    from ftcore.recipe import load_recipe

    recipe = load_recipe(DEMO_RECIPE, ["data.split.validation=0"])
    collected = collect_stage(CollectJob(data=recipe.data, sources={}), tmp_path / "collected")
    out = clean_balance_stage(clean_job(recipe, collected), tmp_path / "clean")
    assert out.metrics["rows_validation"] == 0 and len(pd.read_parquet(out.splits["validation"])) == 0
    dataset = pd.read_parquet(out.artifacts["dataset"])
    assert len(dataset) == out.metrics["rows_kept"] and set(dataset["split"]) == {"train", "test"}


def test_collect_and_clean_real_medquad_rows(tmp_path, shared_data):
    """Real data nobody here shaped: MedQuAD question/answer pairs (NIH), mapped through `columns`."""
    src = shared_data / "medquad_sample_every16.jsonl"
    data = _data_config(src, prompt="question", completion="answer")
    collected = collect_stage(CollectJob(data=data, sources={}), tmp_path / "collected")
    with src.open() as f:
        assert collected.rows == sum(1 for line in f if line.strip())
    # MedQuAD repeats the same answer under different questions: dedup on the answer column.
    clean = CleanConfig(steps=[StepSpec(step="normalize_whitespace"),
                               StepSpec(step="drop_duplicates", columns=["completion"])])
    out = clean_balance_stage(CleanJob(collected=collected, data=data, clean=clean, balance=BalanceConfig()),
                              tmp_path / "clean")
    raw = pd.read_json(src, lines=True)
    expected_dups = raw["answer"].str.split().str.join(" ").str.lower().duplicated().sum()
    assert expected_dups > 0
    assert out.metrics["drop_duplicates.rows_quarantined"] == expected_dups
    assert out.metrics["rows_kept"] + out.metrics["rows_quarantined"] == collected.rows
    train = pd.read_parquet(out.splits["train"])
    assert not train["raw_completion"].str.contains(r"\s{2,}").any()


def test_a_glob_reads_every_matching_file_and_tags_rows_with_their_file(tmp_path):
    import gzip

    (tmp_path / "part1.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    (tmp_path / "part2.jsonl.gz").write_bytes(gzip.compress(b'{"prompt": "c", "completion": "d"}\n'))
    pd.DataFrame({"prompt": ["e"], "completion": ["f"]}).to_parquet(tmp_path / "part3.parquet")
    cfg = DataConfig(sources=[
        {"type": "jsonl", "path": tmp_path / "part*.jsonl*"},
        {"type": "parquet", "path": tmp_path / "*.parquet"},
    ])
    rows = pd.read_parquet(collect_stage(CollectJob(data=cfg, sources={}), tmp_path / "out").splits["all"])
    assert rows["prompt"].tolist() == ["a", "c", "e"]
    assert rows["source"].tolist() == ["part1.jsonl", "part2.jsonl.gz", "part3.parquet"]


@pytest.mark.parametrize("kind", ["csv", "json"])
def test_csv_and_json_sources_map_columns(tmp_path, kind):
    frame = pd.DataFrame({"q": ["What is BP?", "What is MI?"], "a": ["blood pressure", "myocardial infarction"]})
    path = tmp_path / f"rows.{kind}"
    frame.to_csv(path, index=False) if kind == "csv" else frame.to_json(path, orient="records")
    rows = pd.read_parquet(collect_stage(CollectJob(data=_data_config(path, prompt="q", completion="a"), sources={}),
                                         tmp_path / "out").splits["all"])
    assert rows[["prompt", "completion"]].values.tolist() == frame.values.tolist()
    assert rows["source_row"].tolist() == ([2, 3] if kind == "csv" else [1, 2])  # CSV: line numbers (header: 1)


def test_a_glob_that_matches_nothing_is_a_recipe_error(tmp_path):
    from ftcore.errors import RecipeError
    from ftcore.recipe import load_recipe

    with pytest.raises(RecipeError, match=r"data\.sources\.0\.path: pattern matches no file"):
        load_recipe(DEMO_RECIPE, [f"data.sources.0.path={tmp_path}/*.jsonl"])


def test_the_shipped_medquad_recipe_cleans_real_data_losing_nothing(tmp_path, shared_data):
    from ftcore.recipe import load_recipe
    from tests.conftest import REPO

    recipe = load_recipe(REPO / "data_recipes" / "recipes" / "shared" / "medquad_qa.yaml")
    collected = collect_stage(CollectJob(data=recipe.data, sources={}), tmp_path / "collected")
    out = clean_balance_stage(clean_job(recipe, collected), tmp_path / "clean")
    m = out.metrics
    assert m["rows_in"] == collected.metrics["rows_kept"] == 1026
    assert m["rows_in"] == m["rows_kept"] + m["rows_quarantined"]
    for step in recipe.clean.steps:
        assert m[f"{step.step}.rows_in"] == m[f"{step.step}.rows_kept"] + m[f"{step.step}.rows_quarantined"]
    quarantine = pd.read_parquet(out.artifacts["quarantine"])
    assert len(quarantine) == m["rows_quarantined"] > 0
    assert quarantine["reason"].str.len().gt(0).all() and quarantine["step"].notna().all()
    kept = pd.read_parquet(out.artifacts["dataset"])
    assert kept["raw_completion"].str.contains("<URL>", regex=False).any()  # redact_pii ran on real text
    assert kept["raw_completion"].str.contains("magnetic resonance imaging (MRI)", regex=False).any()


@pytest.mark.parametrize("spec", [StepSpec(step="drop_duplicates", columns=["answer"]),
                                  StepSpec(step="drop_short", column="answer")])
def test_a_step_naming_a_missing_column_fails_in_one_line(spec):
    expected = rf"clean\.steps\.0 \({spec.step}\): no column 'answer' in the data; columns: prompt, completion"
    with pytest.raises(DataError, match=expected):
        run_steps(_frame([("a", "b")]), [spec], ["prompt", "completion"])
