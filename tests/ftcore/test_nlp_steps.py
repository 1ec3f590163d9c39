"""expand_abbreviations and remove_stopwords: spaCy-token steps, on hand-written cases and on real MedQuAD and SMS
text (../shared/data)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from pydantic import ValidationError

from ftcore.data.clean import run_steps
from ftcore.data.config import StepSpec
from ftcore.data.steps.nlp import load_dictionary, shipped_dictionaries

QA = ["prompt", "completion"]


def qa_frame(completions: list[str], prompts: list[str] | None = None) -> pd.DataFrame:
    prompts = prompts or ["q"] * len(completions)
    return pd.DataFrame({"prompt": prompts, "completion": completions, "source": "test",
                         "source_row": range(len(completions))})


def expand(texts: list[str], **params) -> list[str]:
    kept, quarantine, _ = run_steps(qa_frame(texts), [StepSpec(step="expand_abbreviations", **params)], QA)
    assert quarantine.empty
    return kept["completion"].tolist()


# --- expand_abbreviations -----------------------------------------------------------------------------------------


def test_clinical_dictionary_ships_with_the_package_and_covers_the_demo():
    table = load_dictionary("clinical")
    assert "clinical" in shipped_dictionaries() and len(table) >= 60
    assert table["MI"] == "myocardial infarction" and table["COPD"] == "chronic obstructive pulmonary disease"
    generator = Path(__file__).resolve().parents[2] / "data_recipes" / "demo" / "generate_clinical_qa.py"
    demo = set(re.findall(r'^    "([A-Z]+)": ', generator.read_text(encoding="utf-8"), flags=re.MULTILINE))
    assert demo and demo <= set(table)


def test_only_whole_tokens_are_expanded():
    out = expand(["He had an MI at MIT; BPM 80, SMILE, DMV and AMI.", "BP was high", "COPD-related"])
    assert out == ["He had an myocardial infarction at MIT; BPM 80, SMILE, DMV and AMI.", "Blood pressure was high",
                   "Chronic obstructive pulmonary disease-related"]


def test_sentence_punctuation_and_spacing_are_kept():
    out = expand(["He had an MI.", "MI is common.  BP:\n120/80.", "Take it b.i.d.", "take b.i.d. with food",
                  "Take b.i.d. Then rest.", "Take b.i.d.  Then rest."])
    assert out == [
        "He had an myocardial infarction.",                        # the sentence's period is not swallowed
        "Myocardial infarction is common.  Blood pressure:\n120/80.",  # sentence starts capitalised, spacing as was
        "Take it twice a day.",                                    # "b.i.d." ends with the sentence's full stop
        "take twice a day with food",                              # ... and here it does not
        "Take twice a day. Then rest.",
        "Take twice a day.  Then rest.",
    ]


def test_extra_extends_overrides_and_removes_entries():
    out = expand(["MI and BP and ABC and HTN"], extra={"MI": "heart attack", "ABC": "airway, breathing, circulation",
                                                        "HTN": None})
    assert out == ["Heart attack and blood pressure and airway, breathing, circulation and HTN"]
    assert expand(["XYZ, not MI"], dictionary=None, extra={"XYZ": "ex why zed"}) == ["Ex why zed, not MI"]


def test_append_style_keeps_the_abbreviation_and_is_idempotent():
    once = expand(["He had an MI and a CT scan."], style="append")
    assert once == ["He had an myocardial infarction (MI) and a computed tomography (CT) scan."]
    assert expand(once, style="append") == once  # already explained: not expanded again


def test_text_that_already_explains_an_abbreviation_is_left_alone():
    texts = ["Complete blood count (CBC): a test.", "End stage renal disease (ESRD) is", "CT (computerized tomography)"]
    assert expand(texts) == texts


def test_case_sensitivity_and_plurals_are_options():
    assert expand(["mi and bp"]) == ["mi and bp"]
    assert expand(["mi and bp"], case_sensitive=False) == ["Myocardial infarction and blood pressure"]
    assert expand(["Two MIs and UTIs."]) == ["Two MIs and UTIs."]
    assert expand(["Two MIs and UTIs."], plurals=True) == [
        "Two myocardial infarctions and urinary tract infections."]


def test_roman_numerals_are_not_read_as_abbreviations():
    out = expand(["Stage IV cancer; stages III and IV; start IV fluids."])
    assert out == ["Stage IV cancer; stages III and IV; start intravenous fluids."]


def test_columns_and_chat_messages():
    kept, _, _ = run_steps(qa_frame(["an MI"], ["BP?"]), [StepSpec(step="expand_abbreviations",
                                                                   columns=["completion"])], QA)
    assert kept.loc[0, "prompt"] == "BP?" and kept.loc[0, "completion"] == "an myocardial infarction"
    chat = json.dumps([{"role": "user", "content": "What is an MI?"},
                       {"role": "assistant", "content": "A heart attack"}])
    frame = pd.DataFrame({"messages": [chat], "source": "t", "source_row": [0]})
    kept, _, _ = run_steps(frame, [StepSpec(step="expand_abbreviations")], ["messages"])
    assert json.loads(kept.loc[0, "messages"])[0] == {"role": "user", "content": "What is an myocardial infarction?"}


def test_bad_parameters_fail_validation():
    with pytest.raises(ValidationError, match="no abbreviation dictionary 'cardiology'"):
        run_steps(qa_frame(["x"]), [StepSpec(step="expand_abbreviations", dictionary="cardiology")], QA)
    with pytest.raises(ValidationError, match="no abbreviations to expand"):
        run_steps(qa_frame(["x"]), [StepSpec(step="expand_abbreviations", dictionary=None)], QA)


def test_expands_real_medquad_answers_without_touching_longer_words(shared_data: Path):
    rows = [json.loads(line) for line in (shared_data / "medquad_sample_every16.jsonl").open(encoding="utf-8")]
    answers = [r["answer"] for r in rows]
    out = expand(answers)
    changed = [(a, b) for a, b in zip(answers, out, strict=True) if a != b]
    assert len(changed) > 20
    assert any(" MRI" in a and "magnetic resonance imaging" in b for a, b in changed)
    assert any("CT scan" in a and "computed tomography scan" in b for a, b in changed)
    # Words that contain an abbreviation without being one (MITF, CADASIL, GIST, UTIs, NSAIDS, IVIG) never change.
    keys = set(load_dictionary("clinical"))

    def longer_words(text: str) -> Counter:
        return Counter(w for w in re.findall(r"\w+", text) if w not in keys and any(k in w for k in keys))

    before, after = longer_words("\n".join(answers)), longer_words("\n".join(out))
    assert sum(before.values()) > 100
    assert all(after[word] >= n for word, n in before.items())
    assert "Stage IV" in "\n".join(out) and "Stage intravenous" not in "\n".join(out)


# --- remove_stopwords ---------------------------------------------------------------------------------------------


def label_frame(texts: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"text": texts, "label": ["a"] * len(texts), "source": "t", "source_row": range(len(texts))})


def remove(texts: list[str], **params):
    return run_steps(label_frame(texts), [StepSpec(step="remove_stopwords", **params)], ["text"])


def test_stopwords_are_removed_and_empty_rows_quarantined():
    kept, quarantine, metrics = remove(["The patient is not responding to the treatment.", "the of and", "   "])
    assert kept["text"].tolist() == ["patient responding treatment."]
    assert kept["label"].tolist() == ["a"]
    assert quarantine["reason"].tolist() == ["text is only stopwords", "text is empty"]
    assert metrics["remove_stopwords.rows_quarantined"] == 2


def test_stopword_options():
    text = ["The patient is NOT responding, sadly, to treatment!"]
    kept, _, _ = remove(text, keep=["not"], extra_stopwords=["sadly"])
    assert kept["text"].tolist() == ["patient NOT responding, , treatment!"]
    kept, _, _ = remove(text, keep=["not"], lowercase=True, punctuation="drop", output="tokens")
    assert kept["text"].tolist() == ["patient not responding sadly treatment"]
    _, quarantine, _ = remove(["the, and!"], punctuation="drop")
    assert quarantine["reason"].tolist() == ["text is only stopwords and punctuation"]


def test_tokens_of_real_sms_have_no_stopwords(shared_data: Path):
    import spacy

    lines = (shared_data / "sms_spam_collection.tsv").read_text(encoding="utf-8").splitlines()[:500]
    texts = [line.split("\t", 1)[1] for line in lines]
    kept, quarantine, _ = remove(texts, output="tokens", lowercase=True, punctuation="drop")
    assert len(kept) + len(quarantine) == 500 and len(kept) > 450
    stop = spacy.blank("en").Defaults.stop_words
    tokens = " ".join(kept["text"]).split()
    assert tokens and not stop & set(tokens)
    assert all(r.startswith("text is ") for r in quarantine["reason"])
