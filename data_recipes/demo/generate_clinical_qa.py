"""Write the demo datasets: clinical questions that use abbreviations, with some messy rows, and preference pairs
over the same questions.

The answer to every question is the expansion of the abbreviation it asks about, phrased in several ways, so a
model that learns the abbreviations answers held-out phrasings exactly. A share of rows is deliberately messy
(duplicates, empty answers, stray whitespace and HTML markup) so the cleaning stage visibly removes or repairs
something. The RL demo's questions (`clinical_rl_prompts.jsonl`) ask about the same abbreviations in phrasings the
SFT data never uses. The preference pairs (`clinical_preferences.jsonl`, for the reward-model and DPO demos) prefer
the right expansion to the expansion of another abbreviation. The continual-learning demo splits the abbreviations
in two tasks (`clinical_abbrev_a.jsonl`, `clinical_abbrev_b.jsonl`); the glossary (`clinical_glossary.json`) is what
the clinical_terms metric checks answers against, and the canaries (`clinical_canaries.jsonl`) are the questions the
monitor asks the live endpoint. Deterministic: the committed files are this script's output.

    python data_recipes/demo/generate_clinical_qa.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ABBREVIATIONS = {
    "MI": "myocardial infarction",
    "BP": "blood pressure",
    "COPD": "chronic obstructive pulmonary disease",
    "CHF": "congestive heart failure",
    "DM": "diabetes mellitus",
    "HTN": "hypertension",
    "CAD": "coronary artery disease",
    "CKD": "chronic kidney disease",
    "DVT": "deep vein thrombosis",
    "PE": "pulmonary embolism",
    "UTI": "urinary tract infection",
    "GERD": "gastroesophageal reflux disease",
    "CVA": "cerebrovascular accident",
    "TIA": "transient ischemic attack",
    "AF": "atrial fibrillation",
    "HR": "heart rate",
    "RR": "respiratory rate",
    "SOB": "shortness of breath",
    "ECG": "electrocardiogram",
    "CBC": "complete blood count",
    "BMI": "body mass index",
    "ICU": "intensive care unit",
    "NPO": "nothing by mouth",
    "PRN": "as needed",
    "BID": "twice a day",
    "TID": "three times a day",
    "IV": "intravenous",
    "PO": "by mouth",
    "OSA": "obstructive sleep apnea",
    "RA": "rheumatoid arthritis",
    "ARDS": "acute respiratory distress syndrome",
    "AKI": "acute kidney injury",
    "URI": "upper respiratory infection",
    "CT": "computed tomography",
    "MRI": "magnetic resonance imaging",
    "TB": "tuberculosis",
    "LDL": "low density lipoprotein",
    "NSAID": "nonsteroidal anti inflammatory drug",
}

TEMPLATES = [
    "What does {a} stand for?",
    "What does {a} mean in a clinical note?",
    "Expand the abbreviation {a}.",
    "In medical records, what is {a}?",
    "The chart lists {a}. What does that mean?",
    "What is the full form of {a}?",
    "Spell out {a}.",
    "The discharge summary mentions {a}. Spell it out.",
]

# The RL demo's questions: phrasings the SFT data never uses, so the SFT model is unsure of some answers and the
# policy has something to learn from its reward (on questions it already answers with certainty, every sampled
# answer is the same and scores the same: GRPO learns nothing from such a group).
RL_TEMPLATES = [
    "What is the meaning of {a}?",
    "Define {a}.",
    "{a} is short for what?",
    "Please expand {a}.",
    "What is {a} an abbreviation for?",
    "A nurse wrote {a}. What does it stand for?",
    "Give the full term for {a}.",
    "Decode the abbreviation {a}.",
]

SEED = 0
OUT = Path(__file__).with_name("clinical_qa.jsonl")
PREFERENCES = Path(__file__).with_name("clinical_preferences.jsonl")
GLOSSARY = Path(__file__).with_name("clinical_glossary.json")
CANARIES = Path(__file__).with_name("clinical_canaries.jsonl")
RL_PROMPTS = Path(__file__).with_name("clinical_rl_prompts.jsonl")


def clean_rows(templates: list[str] = TEMPLATES) -> list[dict]:
    return [
        {"question": t.format(a=abbr), "answer": expansion}
        for abbr, expansion in ABBREVIATIONS.items()
        for t in templates
    ]


def messy_rows(rows: list[dict], rng: random.Random) -> list[dict]:
    """Duplicates, empty answers, and whitespace/markup noise that cleaning must handle."""
    duplicates = [dict(r) for r in rng.sample(rows, 24)]
    empty = [{"question": r["question"], "answer": rng.choice(["", "   ", "<br>"])} for r in rng.sample(rows, 12)]
    noisy = []
    for r in rng.sample(rows, 24):
        noisy.append({
            "question": rng.choice(["  {q}", "{q}\n\n", "<p>{q}</p>", "{q}  "]).format(q=r["question"]),
            "answer": rng.choice(["{a} ", "<b>{a}</b>", " {a}", "{a}\t"]).format(a=r["answer"]),
        })
    return duplicates + empty + noisy


def preference_rows(rows: list[dict], rng: random.Random) -> list[dict]:
    """Each question with its right answer (`good`) and a wrong one (`bad`: another abbreviation's expansion)."""
    expansions = sorted(set(ABBREVIATIONS.values()))
    return [{"question": r["question"], "good": r["answer"],
             "bad": rng.choice([e for e in expansions if e != r["answer"]])} for r in rows]


def canary_rows() -> list[dict]:
    """One question per abbreviation, the phrasings taken in turn: what the monitor asks the live endpoint."""
    return [{"question": TEMPLATES[i % len(TEMPLATES)].format(a=abbr), "answer": expansion}
            for i, (abbr, expansion) in enumerate(ABBREVIATIONS.items())]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} rows to {path}")


def main() -> None:
    rng = random.Random(SEED)
    rows = clean_rows()
    rows += messy_rows(rows, rng)
    rng.shuffle(rows)
    write_jsonl(OUT, rows)
    pairs = preference_rows(clean_rows(), random.Random(SEED + 1))
    random.Random(SEED + 1).shuffle(pairs)
    write_jsonl(PREFERENCES, pairs)
    half = len(ABBREVIATIONS) // 2
    for suffix, task in (("a", clean_rows()[: half * len(TEMPLATES)]), ("b", clean_rows()[half * len(TEMPLATES):])):
        write_jsonl(OUT.with_name(f"clinical_abbrev_{suffix}.jsonl"), task)
    # The clinical_terms metric (data_recipes/metrics/clinical_terms.py) checks answers against this glossary.
    GLOSSARY.write_text(json.dumps(ABBREVIATIONS, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(ABBREVIATIONS)} terms to {GLOSSARY}")
    # The monitor's canaries (monitor.canaries in clinical_qa.yaml): questions with known answers.
    write_jsonl(CANARIES, canary_rows())
    rl_prompts = clean_rows(RL_TEMPLATES)
    random.Random(SEED + 2).shuffle(rl_prompts)
    write_jsonl(RL_PROMPTS, rl_prompts)


if __name__ == "__main__":
    main()
