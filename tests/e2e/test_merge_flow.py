"""Merging through the whole flow (docs/merging.md): two LoRA adapters trained on one base for the two halves of the
clinical abbreviations (data_recipes/recipes/continual_a.yaml on each half) are registered, then a `merge:` recipe
combines them. Its candidate is scored on each source's own test split (from the sources' runs) beside the sources
themselves, the gate's keep_sources rule compares them, the version's tags name its sources, and a recipe trains on
top of the merged adapter (stacking)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from ftcore import tracking
from ftcore.errors import UserError

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_harness")]
REPO = Path(__file__).parents[2]
DEMO = REPO / "data_recipes" / "demo"
QUICK = ["monitor.probe_size=2", "stages.retry_delay_s=0", "stages.retries=0", "deploy.exports=[]"]


def shared_base(folder: Path) -> Path:
    """A small Llama and its tokenizer, as a downloaded model folder: the base both sources are trained on."""
    from ftcore.models.config import ScratchModelConfig
    from ftcore.models.scratch import build_model, train_tokenizer

    rows = pd.concat([pd.read_json(DEMO / f"clinical_abbrev_{half}.jsonl", lines=True) for half in "ab"])
    cfg = ScratchModelConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                             vocab_size=400)
    tokenizer = train_tokenizer([f"Question: {q}\nAnswer: {a}" for q, a in zip(rows.question, rows.answer,
                                                                              strict=True)], cfg.vocab_size, cfg)
    build_model(cfg, tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def train_source(half: str, base: Path | None, *overrides: str) -> dict:
    """abbrev-<half> trained on `base`, or without one on a base built from config (of the same shape)."""
    from flows.finetune import finetune

    model = ["model.source=pretrained", f"model.name_or_path={base}"] if base else [
        "model.scratch.hidden_size=64", "model.scratch.intermediate_size=128", "model.scratch.num_hidden_layers=2",
        "model.scratch.num_attention_heads=2", "model.scratch.vocab_size=400", "model.scratch.seed=1"]
    return finetune(str(REPO / "data_recipes" / "recipes" / "continual_a.yaml"),
                    [*QUICK, *model, *overrides, f"name=abbrev-{half}", f"deploy.registered_model=abbrev-{half}",
                     f"data.sources.0.path={DEMO}/clinical_abbrev_{half if half != 'c' else 'a'}.jsonl"])


def merge_recipe(tmp_path: Path, **merge) -> str:
    recipe = {"name": "abbrev-merged", "merge": merge,
              "evaluate": {"metrics": ["exact_match", "perplexity"], "max_new_tokens": 12},
              "deploy": {"gate": [{"rule": "beat_champion", "confident": False}, {"rule": "keep_sources",
                                                                                  "share": 0.9}]}}
    path = tmp_path / f"merge-{len(list(tmp_path.glob('merge-*')))}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def test_a_merge_is_scored_on_each_source_s_test_rows_gated_against_them_and_trained_on(tmp_path):
    from flows.finetune import finetune

    base = shared_base(tmp_path / "base")
    sources = {half: train_source(half, base) for half in "ab"}
    both = ["models:/abbrev-a@champion", "models:/abbrev-b/1"]

    # Weight 0 on the second source: the merged adapter is the first one's, answer for answer.
    only_a = finetune(merge_recipe(tmp_path, sources=both, combination="cat", weights=[1.0, 0.0]), QUICK)
    m = only_a["stages"]["evaluate"]["metrics"]
    assert m["test_rows"] == sum(s["stages"]["clean_balance"]["metrics"]["rows_test"] for s in sources.values())
    for task in ("abbrev-a", "abbrev-b"):
        assert m[f"exact_match.{task}"] == m[f"source_abbrev-a.exact_match.{task}"]
        assert m[f"perplexity.{task}"] == pytest.approx(m[f"source_abbrev-a.perplexity.{task}"], rel=1e-3)
    # Each source learnt its own half (the two halves share no abbreviation).
    assert m["source_abbrev-a.exact_match.abbrev-a"] > m["source_abbrev-a.exact_match.abbrev-b"]
    assert m["source_abbrev-b.exact_match.abbrev-b"] > m["source_abbrev-b.exact_match.abbrev-a"]
    keep = next(rule for rule in only_a["gate"]["rules"] if rule["rule"] == "keep_sources")
    b_kept = m["exact_match.abbrev-b"] / m["source_abbrev-b.exact_match.abbrev-b"]
    assert not keep["passed"] and keep["value"] == pytest.approx(b_kept) and "abbrev-b keeps" in keep["reason"]
    tags = tracking.client().get_model_version("abbrev-merged", only_a["model"]["version"]).tags
    assert tags["merged_from"] == "abbrev-a/1, abbrev-b/1" and tags["merge"] == "cat, weights 1 0"
    assert "started_from" not in tags

    ties = finetune(merge_recipe(tmp_path, sources=both, combination="ties", density=0.5), QUICK)
    assert ties["stages"]["train"]["metrics"] == {"merged_sources": 2, "merged_rank": 8}
    assert ties["stages"]["evaluate"]["metrics"]["exact_match.abbrev-a"] != m["exact_match.abbrev-a"] or \
        ties["stages"]["evaluate"]["metrics"]["perplexity.abbrev-a"] != pytest.approx(m["perplexity.abbrev-a"])

    # Stacking: the merged version's adapter trained further on task b.
    stacked = finetune(str(REPO / "data_recipes" / "recipes" / "continual_a.yaml"), [
        *QUICK, "name=abbrev-stacked", "deploy.registered_model=abbrev-stacked", "train.max_steps=5",
        f"data.sources.0.path={DEMO}/clinical_abbrev_b.jsonl", "model.source=champion",
        "model.registered_model=abbrev-merged", f"model.version={ties['model']['version']}", "model.start=adapter"])
    assert stacked["stages"]["train"]["metrics"]["steps"] == 5
    assert tracking.client().get_model_version("abbrev-stacked", "1").tags["started_from"] == \
        f"abbrev-merged/{ties['model']['version']}"

    # A source trained on another base of the same shape is refused in one line, and no version is made.
    train_source("c", None, "train.max_steps=5")
    with pytest.raises(UserError, match=r"merge\.sources: models:/abbrev-c/1 was not trained on the base of "
                                        r"models:/abbrev-a/1 \(their base weights differ by up to") as refused:
        finetune(merge_recipe(tmp_path, sources=[*both, "models:/abbrev-c/1"]), QUICK)
    assert "\n" not in str(refused.value)
    assert len(tracking.client().search_model_versions("name='abbrev-merged'")) == 2
