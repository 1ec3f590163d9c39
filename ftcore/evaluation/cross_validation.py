"""k-fold cross-validation for small datasets (evaluate.cross_validation: k): the train split cut into k folds, the
init stage's model trained k times on k-1 of them with the recipe's training settings and scored on the fold left
out. With a few hundred rows one test split is a noisy judge; the spread over k folds says how much a score can be
trusted. Reported as `cv.<metric>.mean` and `cv.<metric>.std` (across folds) and `cv.folds`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from ftcore.config import TrainConfig
from ftcore.errors import DataError
from ftcore.evaluate_config import EvaluateConfig
from ftcore.evaluation.evaluate import evaluate_classifiers
from ftcore.evaluation.language import evaluate_language_models
from ftcore.evaluation.scores import CANDIDATE
from ftcore.outputs import ModelOutput
from ftcore.training.train import train_model

FOLD_SEED = 0


def cross_validate(base: ModelOutput, train_split: Path, train: TrainConfig, cfg: EvaluateConfig, task: str,
                   work_dir: Path, loss_spec: dict | None = None) -> dict[str, float]:
    """Train and score each of evaluate.cross_validation folds of the train split; the mean and standard deviation
    of every metric over the folds. Fold models are deleted once scored."""
    rows = pd.read_parquet(train_split).sample(frac=1.0, random_state=FOLD_SEED).reset_index(drop=True)
    k = cfg.cross_validation
    if len(rows) < 2 * k:
        raise DataError(f"evaluate.cross_validation: {k} folds of {len(rows)} training rows leave fewer than 2 rows "
                        "a fold; lower k")
    # Folds train without a validation split: nothing to stop early on, and the left-out fold is the judge.
    fold_train = train.model_copy(update={"early_stopping_patience": None, "eval_steps": None})
    quick = cfg.model_copy(update={"fewshot": 0, "bootstrap_resamples": 0})
    per_fold: dict[str, list[float]] = {}
    for fold, held_out in enumerate(np.array_split(np.arange(len(rows)), k)):
        folder = work_dir / f"fold-{fold}"
        folder.mkdir(parents=True, exist_ok=True)
        rows.drop(index=held_out).to_parquet(folder / "train.parquet", index=False)
        test = rows.iloc[held_out].reset_index(drop=True)
        trained = train_model(base, {"train": folder / "train.parquet"}, fold_train, folder / "model", task,
                              loss_spec)
        models = {CANDIDATE: trained.model_path}
        if task == "classification":
            scores, _, _ = evaluate_classifiers(models, test, rows.drop(index=held_out))
        else:
            scores, _, _ = evaluate_language_models(models, test, quick, task)
        for metric, fold_rows in scores[CANDIDATE].items():
            per_fold.setdefault(metric, []).append(fold_rows.value)
        shutil.rmtree(folder)
    metrics = {"cv.folds": float(k)}
    for metric, values in per_fold.items():
        metrics[f"cv.{metric}.mean"] = float(np.mean(values))
        metrics[f"cv.{metric}.std"] = float(np.std(values, ddof=1))
    return metrics
