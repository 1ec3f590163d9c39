import pandas as pd
import pytest

from ftcore.data.clean import run_steps
from ftcore.data.config import StepSpec
from ftcore.data.steps.text import redact_text
from ftcore.errors import RecipeError
from ftcore.recipe import load_recipe
from tests.conftest import DEMO_RECIPE

COLUMNS = ["prompt", "completion"]


def _run(step: StepSpec, pairs):
    return run_steps(pd.DataFrame(pairs, columns=COLUMNS), [step], COLUMNS)


@pytest.mark.parametrize(("text", "expected"), [
    ("Mail jane.doe@example.org or call +1 (415) 555-0134 today", "Mail <EMAIL> or call <PHONE> today"),
    ("Card 4111 1111 1111 1111, account 1234 5678 9012 3456", "Card <CARD>, account <ID>"),
    ("SSN 123-45-6789, see https://example.org/a?b=1", "SSN <ID>, see <URL>"),
    ("Take 500 mg twice daily since 2024; BP 120/80", "Take 500 mg twice daily since 2024; BP 120/80"),
    ("Tel 020 7946 0958 or +44 20 7946 0958", "Tel <PHONE> or <PHONE>"),
    # Real MedQuAD text: ZIP+4 codes beside phone numbers stay, vanity numbers stay, real numbers go.
    ("Baltimore, MD 21244-1850 1-800-MEDICARE (1-800-633-4227) 1-877-486-2048 (toll-free TTY number)",
     "Baltimore, MD 21244-1850 1-800-MEDICARE (<PHONE>) <PHONE> (toll-free TTY number)"),
    ("1 NOHIC Way  Bethesda, MD 20892-3500  (301) 402-7364  http://www.nidcr.nih.gov",
     "1 NOHIC Way  Bethesda, MD 20892-3500  <PHONE>  <URL>"),
    ("Quitline at (877) 44U-QUIT or (877) 448-7848 between 8:00 a.m.",
     "Quitline at (877) 44U-QUIT or <PHONE> between 8:00 a.m."),
])
def test_redact_pii_uses_typed_placeholders_and_spares_clinical_numbers(text, expected):
    assert redact_text(text) == expected


def test_redact_pii_only_touches_the_kinds_asked_for():
    assert redact_text("jane@example.org, 123-45-6789", kinds=("email",)) == "<EMAIL>, 123-45-6789"


def test_redact_pii_step_keeps_every_row():
    kept, quarantine, _ = _run(StepSpec(step="redact_pii"), [("Email me at a@b.co", "ok"), ("plain", "text")])
    assert kept["prompt"].tolist() == ["Email me at <EMAIL>", "plain"] and quarantine.empty


def test_fix_unicode_repairs_mojibake_and_normalises():
    kept, _, _ = _run(StepSpec(step="fix_unicode", normalization="NFKC"), [("The patientâ€™s BP", "ﬁne")])
    assert kept.iloc[0].tolist()[:2] == ["The patient's BP", "fine"]


def test_filter_length_quarantines_with_the_column_unit_and_limit():
    step = StepSpec(step="filter_length", columns=["completion"], min_chars=3, max_tokens=3)
    kept, quarantine, metrics = _run(step, [("q1", "ok"), ("q2", "blood pressure"), ("q3", "one two three four")])
    assert kept["prompt"].tolist() == ["q2"]
    assert quarantine["reason"].tolist() == ["completion has 2 chars < min 3", "completion has 4 tokens > max 3"]
    assert metrics == {"filter_length.rows_in": 3, "filter_length.rows_kept": 1, "filter_length.rows_quarantined": 2}


def test_filter_length_bounds_are_checked_when_the_recipe_loads():
    with pytest.raises(RecipeError, match="max_chars must be at least min_chars"):
        load_recipe(DEMO_RECIPE, ["clean.steps.4={step: filter_length, min_chars: 10, max_chars: 5}"])


def test_near_duplicates_are_quarantined_naming_the_kept_row():
    base = "Chronic obstructive pulmonary disease is a lung disease that blocks airflow and makes breathing hard"
    pairs = [("q0", base), ("q1", "Hypertension means blood pressure that stays high over time"),
             ("q2", base.replace("hard", "difficult")), ("q3", base + ".")]
    step = StepSpec(step="drop_near_duplicates", columns=["completion"], threshold=0.7)
    kept, quarantine, metrics = _run(step, pairs)
    assert kept["prompt"].tolist() == ["q0", "q1"]
    assert quarantine["reason"].str.match(r"near-duplicate of row 0 \(estimated Jaccard [01]\.\d\d\)").all()
    assert metrics["drop_near_duplicates.rows_in"] == 4


def test_near_duplicates_on_real_medquad_answers(shared_data):
    from ftcore.data.steps.dedup import _shingles

    raw = pd.read_json(shared_data / "medquad_sample_every16.jsonl", lines=True)
    rows = raw.rename(columns={"question": "prompt", "answer": "completion"})[COLUMNS]
    step = StepSpec(step="drop_near_duplicates", columns=["completion"], threshold=0.85)
    kept, quarantine, _ = run_steps(rows, [step], COLUMNS)
    assert len(kept) + len(quarantine) == len(rows) and len(quarantine) > 0
    for _, row in quarantine.iterrows():
        other = int(row["reason"].split("row ")[1].split(" ")[0])
        assert other in kept.index  # the row it duplicates is one that was kept
        a, b = _shingles(row["completion"], 3), _shingles(rows.loc[other, "completion"], 3)
        assert len(a & b) / len(a | b) > 0.7  # MinHash estimates Jaccard; the true overlap is close to it
