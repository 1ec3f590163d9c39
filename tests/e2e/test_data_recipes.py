"""The acceptance runs of the data stages: each real-data recipe in data_recipes/recipes/shared runs the flow until
clean_balance, loses no row, gives every quarantined row a reason, and shows the counts in the data card."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from ftcore.config import Stage
from ftcore.paths import home
from tests.conftest import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_harness", "shared_data")]
SHARED_RECIPES = REPO / "data_recipes" / "recipes" / "shared"


@pytest.mark.parametrize("recipe", ["medquad_qa.yaml", "sms_spam.yaml", "hh_rlhf_preference.yaml"])
def test_real_data_recipe_runs_until_clean_balance_and_loses_nothing(recipe):
    from flows.finetune import finetune

    summary = finetune(str(SHARED_RECIPES / recipe), [], Stage.clean_balance)
    written = json.loads((home() / "runs" / summary["run_id"] / "summary.json").read_text())
    collect, clean = written["stages"]["collect"], written["stages"]["clean_balance"]
    for stage in (collect, clean):
        m = stage["metrics"]
        assert stage["status"] == "completed"
        assert m["rows_in"] == m["rows_kept"] + m["rows_quarantined"]
        quarantine = pd.read_parquet(stage["artifacts"]["quarantine"])
        assert len(quarantine) == m["rows_quarantined"]
        assert quarantine["reason"].str.len().gt(0).all() and quarantine["step"].str.len().gt(0).all()
    m = clean["metrics"]
    assert m["rows_in"] == collect["metrics"]["rows_kept"]
    steps = [k.removesuffix(".rows_in") for k in m if k.endswith(".rows_in")]
    assert steps and all(m[f"{s}.rows_in"] == m[f"{s}.rows_kept"] + m[f"{s}.rows_quarantined"] for s in steps)
    assert len(pd.read_parquet(clean["artifacts"]["dataset"])) == m["rows_train"] + m["rows_validation"] + \
        m["rows_test"]
    card = Path(clean["artifacts"]["data_card"]).read_text(encoding="utf-8")
    assert f"**{m['rows_in']:.0f} rows in = {m['rows_kept']:.0f} kept + {m['rows_quarantined']:.0f} quarantined.**" \
        in card
    for s in steps:
        assert f"| {s} | {m[f'{s}.rows_in']:.0f} | {m[f'{s}.rows_kept']:.0f} | {m[f'{s}.rows_quarantined']:.0f} |" \
            in card
