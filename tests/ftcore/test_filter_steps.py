"""filter_language and filter_toxicity (lexicon, a tiny local classifier, a scorer registered here), on hand-written
rows and on real MedQuAD and HH-RLHF text (../shared/data)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest
from pydantic import ValidationError

from ftcore.data.clean import run_steps
from ftcore.data.config import StepSpec
from ftcore.safety import toxicity

QA = ["prompt", "completion"]


def qa_frame(completions: list[str], prompts: list[str] | None = None) -> pd.DataFrame:
    prompts = prompts or ["Question?"] * len(completions)
    return pd.DataFrame({"prompt": prompts, "completion": completions, "source": "test",
                         "source_row": range(len(completions))})


def run(frame: pd.DataFrame, step: str, text_columns: list[str] = QA, **params):
    return run_steps(frame, [StepSpec(step=step, **params)], text_columns)


def medquad(shared_data: Path) -> pd.DataFrame:
    rows = [json.loads(line) for line in (shared_data / "medquad_sample_every16.jsonl").open(encoding="utf-8")]
    return qa_frame([r["answer"] for r in rows], [r["question"] for r in rows])


# --- filter_language ----------------------------------------------------------------------------------------------

ENGLISH = "The patient was admitted with chest pain and shortness of breath after climbing the stairs."
GERMAN = "Der Patient wurde mit Brustschmerzen und Atemnot aufgenommen, nachdem er die Treppe gestiegen war."
FRENCH = "Le patient a été admis pour une douleur thoracique et un essoufflement après avoir monté l'escalier."


def test_other_languages_are_quarantined_with_the_language_and_confidence():
    kept, quarantine, _ = run(qa_frame([ENGLISH, GERMAN, FRENCH, "Ja, danke."]), "filter_language",
                              columns=["completion"], languages=["en"])
    assert kept["completion"].tolist() == [ENGLISH, "Ja, danke."]  # too short to judge: kept
    reasons = quarantine["reason"].tolist()
    assert [r.split(" (")[0] for r in reasons] == ["language de", "language fr"]
    assert all(r.endswith("), expected en") and float(r.split("(")[1].split(")")[0]) >= 0.5 for r in reasons)


def test_kept_languages_and_confidence_options():
    kept, _, _ = run(qa_frame([ENGLISH, GERMAN, FRENCH]), "filter_language", columns=["completion"],
                     keep=["en", "de"], candidates=["fr"])
    assert kept["completion"].tolist() == [ENGLISH, GERMAN]
    kept, _, _ = run(qa_frame([GERMAN]), "filter_language", columns=["completion"], min_confidence=1.0)
    assert len(kept) == 1  # the detector is never certain, so nothing is quarantined


def test_language_codes_are_checked():
    with pytest.raises(ValidationError, match="ISO 639-1"):
        run(qa_frame([ENGLISH]), "filter_language", keep=["english"])
    with pytest.raises(ValidationError, match="at least two languages"):
        run(qa_frame([ENGLISH]), "filter_language", keep=["en"], candidates=[])


def test_real_medquad_is_english(shared_data: Path):
    frame = medquad(shared_data)
    _, quarantine, _ = run(frame, "filter_language")
    assert len(quarantine) <= len(frame) // 100, quarantine["reason"].tolist()


# --- filter_toxicity: lexicon -------------------------------------------------------------------------------------


def test_lexicon_quarantines_toxic_rows_and_names_the_terms():
    texts = ["You are an idiot.", "Rest and fluids help.", "Shut   up, you stupid morons",
             "Shiitake, classic, assassin"]
    kept, quarantine, _ = run(qa_frame(texts), "filter_toxicity")
    assert kept["completion"].tolist() == ["Rest and fluids help.", "Shiitake, classic, assassin"]
    assert quarantine["reason"].tolist() == [
        "toxicity 0.50 >= 0.5 in completion (lexicon: 'idiot')",
        "toxicity 0.88 >= 0.5 in completion (lexicon: 'shut   up', 'stupid', 'morons')",
    ]


def test_threshold_and_columns():
    frame = qa_frame(["You idiot.", "You stupid idiot."], ["Fine question", "Fine question"])
    kept, _, _ = run(frame, "filter_toxicity", threshold=0.7)
    assert kept["completion"].tolist() == ["You idiot."]
    kept, _, _ = run(frame, "filter_toxicity", columns=["prompt"])
    assert len(kept) == 2


def test_monitor_uses_the_same_lexicon():
    from ftcore.monitor.toxicity import toxic_flags
    from ftcore.safety.config import ToxicityScreenConfig

    assert "idiot" in toxicity.DEFAULT_TERMS
    assert toxicity.score_texts("lexicon", ["idiot", "fine"]) == [0.5, 0.0]
    # The monitor flags what the cleaning step's lexicon scores at or above the threshold.
    assert toxic_flags(["you idiot", "fine"], ToxicityScreenConfig(threshold=0.5)).tolist() == [1.0, 0.0]


def test_lexicon_catches_real_toxic_dialogues_and_spares_medical_text(shared_data: Path):
    with gzip.open(shared_data / "hh-rlhf_harmless-base_test.jsonl.gz", "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    frame = pd.DataFrame({"prompt": "", "chosen": [r["chosen"] for r in rows],
                          "rejected": [r["rejected"] for r in rows], "source": "hh", "source_row": range(len(rows))})
    _, quarantine, _ = run(frame, "filter_toxicity", text_columns=["prompt", "chosen", "rejected"],
                              columns=["rejected"])
    assert 50 < len(quarantine) < len(frame) // 4
    assert all(r.startswith("toxicity ") and "in rejected (lexicon: '" in r for r in quarantine["reason"])
    _, medical, _ = run(medquad(shared_data), "filter_toxicity")
    assert medical.empty


# --- filter_toxicity: pluggable scorers ---------------------------------------------------------------------------


@pytest.fixture
def shouting_scorer():
    """A scorer registered the way a data engineer's module registers one; removed after the test."""

    @toxicity.toxicity_scorer("test_shouting")
    def shouting(texts: list[str]) -> list[float]:
        return [sum(c.isupper() for c in t) / max(1, sum(c.isalpha() for c in t)) for t in texts]

    yield "test_shouting"
    toxicity.TOXICITY_SCORERS.unregister("test_shouting")


def test_a_registered_scorer_is_used_by_name(shouting_scorer: str):
    kept, quarantine, _ = run(qa_frame(["WHY WONT YOU ANSWER", "A calm answer"]), "filter_toxicity",
                              scorer=shouting_scorer, threshold=0.8)
    assert kept["completion"].tolist() == ["A calm answer"]
    assert quarantine["reason"].tolist() == ["toxicity 1.00 >= 0.8 in completion (test_shouting)"]


def test_unknown_scorer_and_missing_model_are_recipe_errors():
    with pytest.raises(ValidationError, match="unknown toxicity scorer 'nope'; available: classifier, guard, lexicon"):
        run(qa_frame(["x"]), "filter_toxicity", scorer="nope")
    with pytest.raises(ValidationError, match="needs model_path"):
        run(qa_frame(["x"]), "filter_toxicity", scorer="classifier")


def test_a_scorer_out_of_range_fails_loudly():
    @toxicity.toxicity_scorer("test_broken")
    def broken(texts: list[str]) -> list[float]:
        return [2.0 for _ in texts]

    try:
        with pytest.raises(ValueError, match="outside"):
            run(qa_frame(["x"]), "filter_toxicity", scorer="test_broken")
    finally:
        toxicity.TOXICITY_SCORERS.unregister("test_broken")


# --- filter_toxicity: classifier ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised two-label BERT with a word-level tokenizer, saved as a local model folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-toxicity")
    words = ["you", "are", "an", "idiot", "rest", "and", "fluids", "help", "the", "patient", "is", "stable"]
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                        cls_token="[CLS]", sep_token="[SEP]", model_max_length=32)
    tokenizer.save_pretrained(folder)
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=2,
                        id2label={0: "neutral", 1: "toxic"}, label2id={"neutral": 0, "toxic": 1})
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def test_classifier_scores_are_probabilities_of_the_toxic_label(tiny_classifier: Path):
    texts = ["you are an idiot", "rest and fluids help", "the patient is stable " * 20]  # the last is truncated
    toxic = toxicity.score_texts("classifier", texts, model_path=str(tiny_classifier), batch_size=2)
    neutral = toxicity.score_texts("classifier", texts, model_path=str(tiny_classifier), toxic_label="neutral")
    assert all(0.0 <= s <= 1.0 for s in toxic)
    assert [a + b for a, b in zip(toxic, neutral, strict=True)] == pytest.approx([1.0] * 3)
    by_index = toxicity.score_texts("classifier", texts, model_path=str(tiny_classifier), toxic_label=1)
    assert by_index == pytest.approx(toxic, abs=1e-5)  # batches of 32, not 2: other padding, same scores


def test_classifier_scores_drive_the_decision(tiny_classifier: Path):
    frame = qa_frame(["you are an idiot", "rest and fluids help"])
    params = {"scorer": "classifier", "model_path": str(tiny_classifier)}
    kept, quarantine, _ = run(frame, "filter_toxicity", threshold=0.0, **params)
    assert kept.empty and all("(classifier)" in r for r in quarantine["reason"])
    kept, quarantine, _ = run(frame, "filter_toxicity", threshold=1.01, **params)
    assert len(kept) == 2 and quarantine.empty
    with pytest.raises(Exception, match="not a label of the model"):
        run(frame, "filter_toxicity", toxic_label="hateful", **params)
