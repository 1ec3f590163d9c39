"""The scorers of the objective table (`Objective.scorer`): how each objective's models are scored on the test
split, which model the candidate must beat before the first champion, what a latency probe sends, and what the
safety screen reads for objectives whose models answer prompts.

- answers (sft, multitask): generated answers against the references, and perplexity (ftcore/evaluation/language.py);
- text (dapt): perplexity of the whole text;
- classes (classification): accuracy and F1 against a TF-IDF + logistic regression baseline trained on the same
  train split (an encoder without its trained head cannot classify, so there is no meaningful "base" score);
- preference_pairs (dpo), reward_pairs (reward_model), rewards (rl): ftcore/evaluation/preference.py;
- image_answers (vision_language): answers about the test images (ftcore/evaluation/vision.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict

from ftcore.alignment.config import RewardConfig
from ftcore.data.images import with_image_paths
from ftcore.evaluation.classification import (
    classification_metrics,
    classification_rows,
    classify,
    confusion,
    plot_confusion,
    tfidf_baseline,
)
from ftcore.evaluation.config import EvaluateConfig
from ftcore.evaluation.intervals import CANDIDATE, ModelScores
from ftcore.evaluation.language import eval_examples, evaluate_language_models
from ftcore.evaluation.preference import (
    LENGTH_BASELINE,
    evaluate_policies_on_pairs,
    evaluate_policies_on_reward,
    evaluate_reward_models,
)
from ftcore.evaluation.vision import evaluate_image_models, image_questions
from ftcore.models.load import load_trained, reload_tokenizer
from ftcore.objectives import DEFAULT_OBJECTIVE, OBJECTIVES, Objective, ScorerName
from ftcore.progress import progress_bar

BASELINE = "tfidf"


class Scoring(BaseModel):
    """What scoring the models takes besides the models: the splits, the evaluate section, the objective, its
    reward (rl), the forgetting set's test rows, and what the report shows."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    splits: dict[str, Path]
    evaluate: EvaluateConfig = EvaluateConfig()
    objective: Objective = OBJECTIVES[DEFAULT_OBJECTIVE]
    reward: RewardConfig | None = None
    reward_model_dir: Path | None = None
    retained_test: Path | None = None  # a forgetting set
    champion: str | None = None  # NAME/VERSION of the champion scored as `champion`
    title: str = "evaluation"
    images: dict[str, Path] = {}  # shown in the report beside the metrics (e.g. the loss curve)
    folds: dict[str, float] = {}  # cross-validation metrics (cv.*), reported with the others
    split: str = "test"  # the split the models are scored on

    def rows(self, split: str) -> pd.DataFrame | None:
        """The split's rows (images as file paths), or None."""
        return with_image_paths(pd.read_parquet(self.splits[split]), self.splits[split]) if split in self.splits \
            else None


Scores = tuple[ModelScores, dict[str, float], pd.DataFrame]  # per-example scores, plain metrics, predictions
# The screen's inputs: the prompts as the models see them, the questions and reference answers as written.
ScreenInputs = tuple[list[str], list[str], list[str]]


@dataclass(frozen=True)
class Scorer:
    score: Callable[[dict[str, Path], pd.DataFrame, Scoring, str], Scores]  # (models, test, scoring, start)
    reference: str  # the model the candidate must beat when there is no champion
    # What a latency probe sends (model folder, test rows); None: the scorer times the candidate itself.
    probe_texts: Callable[[Path, pd.DataFrame], list[str]] | None
    screen_inputs: Callable[[Path, pd.DataFrame], ScreenInputs] | None = None  # models that answer prompts
    confusion_matrix: bool = False


def score_language(models: dict[str, Path], test: pd.DataFrame, scoring: Scoring, start: str) -> Scores:
    demos = scoring.rows("train") if scoring.evaluate.fewshot else None
    return evaluate_language_models(models, test, scoring.evaluate, demos)


def score_classifiers(models: dict[str, Path], test: pd.DataFrame, scoring: Scoring, start: str) -> Scores:
    """Every model and the TF-IDF baseline: `accuracy` and `macro_f1` per example (they get intervals), `micro_f1`
    and per class `f1_<label>`, `precision_<label>`, `recall_<label>`. A terminal shows each model's texts
    classified of the total."""
    train = scoring.rows("train")
    texts, references = test["text"].astype(str).tolist(), test["label"].astype(str).tolist()
    predictions = pd.DataFrame({"text": texts, "label": references})
    predictions[BASELINE] = tfidf_baseline(train["text"].astype(str).tolist(), train["label"].astype(str).tolist(),
                                           texts)
    for name, path in models.items():
        model, tokenizer = load_trained(path)
        with progress_bar(len(texts), f"{name}: classifying") as bar:
            predictions[name] = classify(model, tokenizer, texts, progress=bar.update)
    names = [BASELINE, *models]
    classes = sorted(set(references) | set(train["label"].astype(str)) | set(predictions[names].stack()))
    scores = {name: classification_rows(references, predictions[name], classes) for name in names}
    plain = {f"{name}.{metric}": value
             for name in names
             for metric, value in classification_metrics(references, predictions[name], classes).items()
             if metric not in scores[name]}
    return scores, plain, predictions


def score_images(models: dict[str, Path], test: pd.DataFrame, scoring: Scoring, start: str) -> Scores:
    demos = scoring.rows("train") if scoring.evaluate.fewshot else None
    return evaluate_image_models(models, test, scoring.evaluate, demos)


def image_questions_asked(model: Path, test: pd.DataFrame) -> ScreenInputs:
    """The questions as written stand for the prompts: the screen reads the answers' text, not the images."""
    questions = image_questions(test)
    return (questions["raw_prompt"].tolist(), questions["raw_prompt"].tolist(),
            questions["raw_completion"].tolist())


def score_pairs(models: dict[str, Path], test: pd.DataFrame, scoring: Scoring, start: str) -> Scores:
    return evaluate_policies_on_pairs(models, test, scoring.evaluate, start)


def score_reward_models(models: dict[str, Path], test: pd.DataFrame, scoring: Scoring, start: str) -> Scores:
    return evaluate_reward_models(models, test, scoring.evaluate)


def score_rewards(models: dict[str, Path], test: pd.DataFrame, scoring: Scoring, start: str) -> Scores:
    if scoring.reward is None:
        raise ValueError("objective rl is evaluated with the recipe's reward")
    return evaluate_policies_on_reward(models, test, scoring.evaluate, scoring.reward, scoring.reward_model_dir)


def templated_prompts(model: Path, test: pd.DataFrame) -> list[str]:
    return eval_examples(test, reload_tokenizer(model))["prompt"].tolist()


def raw_prompts(model: Path, test: pd.DataFrame) -> list[str]:
    return test["prompt"].astype(str).tolist()


def texts(model: Path, test: pd.DataFrame) -> list[str]:
    return test["text"].astype(str).tolist()


def answered_pairs(model: Path, test: pd.DataFrame) -> list[str]:
    return (test["prompt"] + test["chosen"]).astype(str).tolist()


def templated_questions(model: Path, test: pd.DataFrame) -> ScreenInputs:
    examples = eval_examples(test, reload_tokenizer(model))
    return (examples["prompt"].tolist(), examples["raw_prompt"].astype(str).tolist(),
            examples["raw_completion"].astype(str).tolist())


def raw_questions(model: Path, test: pd.DataFrame) -> ScreenInputs:
    """Prompts in the model's format already; the reference is the chosen answer or the completion, where there is
    one."""
    prompts = test["prompt"].astype(str).tolist()
    reference = next((c for c in ("chosen", "completion") if c in test), None)
    return prompts, prompts, test[reference].astype(str).tolist() if reference else [""] * len(test)


SCORERS: dict[ScorerName, Scorer] = {
    "answers": Scorer(score_language, "base", templated_prompts, templated_questions),
    "text": Scorer(score_language, "base", templated_prompts),
    "classes": Scorer(score_classifiers, BASELINE, texts, confusion_matrix=True),
    "preference_pairs": Scorer(score_pairs, "base", raw_prompts, raw_questions),
    "reward_pairs": Scorer(score_reward_models, LENGTH_BASELINE, answered_pairs),
    "rewards": Scorer(score_rewards, "base", raw_prompts, raw_questions),
    # Its latency is timed while scoring (a probe is an image request, not a text).
    "image_answers": Scorer(score_images, "base", None, image_questions_asked),
}

CONFUSION_FILES = {"confusion_matrix": "confusion_matrix.png", "confusion_counts": "confusion_matrix.json"}


def write_confusion(predictions: pd.DataFrame, folder: Path) -> None:
    """The candidate's confusion matrix on the test split, as an image and as counts (true -> predicted -> n)."""
    labels = sorted(set(predictions["label"]) | set(predictions[CANDIDATE]))
    matrix = confusion(predictions["label"], predictions[CANDIDATE], labels)
    plot_confusion(matrix, labels, "Candidate on the test split", folder / CONFUSION_FILES["confusion_matrix"])
    counts = {true: {predicted: int(matrix[i, j]) for j, predicted in enumerate(labels)}
              for i, true in enumerate(labels)}
    (folder / CONFUSION_FILES["confusion_counts"]).write_text(json.dumps(counts, indent=1))
