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

from ftcore.errors import DataError
from ftcore.evaluation.intervals import CANDIDATE
from ftcore.evaluation.jobs import EvaluateJob
from ftcore.evaluation.scorers import SCORERS, Scoring
from ftcore.outputs import DatasetOutput
from ftcore.training.jobs import TrainJob
from ftcore.training.train import train_stage

FOLD_SEED = 0


def cross_validate(job: EvaluateJob, work_dir: Path) -> dict[str, float]:
    """Train and score each of evaluate.cross_validation folds of the train split; the mean and standard deviation
    of every metric over the folds. Fold models are deleted once scored."""
    if job.train is None:
        raise ValueError("cross-validation trains folds: the evaluate job needs the train section")
    rows = pd.read_parquet(job.dataset.splits["train"]).sample(frac=1.0, random_state=FOLD_SEED)
    rows, k = rows.reset_index(drop=True), job.evaluate.cross_validation
    if len(rows) < 2 * k:
        raise DataError(f"evaluate.cross_validation: {k} folds of {len(rows)} training rows leave fewer than 2 rows "
                        "a fold; lower k")
    # Folds train without a validation split: nothing to stop early on, and the left-out fold is the judge.
    fold_train = job.train.model_copy(update={"early_stopping_patience": None, "eval_steps": None})
    quick = job.evaluate.model_copy(update={"fewshot": 0, "bootstrap_resamples": 0})
    per_fold: dict[str, list[float]] = {}
    for fold, held_out in enumerate(np.array_split(np.arange(len(rows)), k)):
        folder = work_dir / f"fold-{fold}"
        folder.mkdir(parents=True, exist_ok=True)
        rows.drop(index=held_out).to_parquet(folder / "train.parquet", index=False)
        # The fold's train rows, with the balance stage's loss (a classifier's class weights) of the whole split.
        fold_data = DatasetOutput(path=folder, content_hash=f"fold-{fold}", splits={"train": folder / "train.parquet"},
                                  rows=len(rows) - len(held_out), artifacts=job.dataset.artifacts)
        trained = train_stage(TrainJob(base=job.base, dataset=fold_data, train=fold_train, objective=job.objective),
                              folder / "model")
        scoring = Scoring(splits=fold_data.splits, evaluate=quick, objective=job.objective)
        test = rows.iloc[held_out].reset_index(drop=True)
        scores, _, _ = SCORERS[job.objective.scorer].score({CANDIDATE: trained.model_path}, test, scoring, CANDIDATE)
        for metric, fold_rows in scores[CANDIDATE].items():
            per_fold.setdefault(metric, []).append(fold_rows.value)
        shutil.rmtree(folder)
    return fold_metrics(per_fold, k)


def fold_metrics(per_fold: dict[str, list[float]], k: int) -> dict[str, float]:
    metrics = {"cv.folds": float(k)}
    for metric, values in per_fold.items():
        metrics[f"cv.{metric}.mean"] = float(np.mean(values))
        metrics[f"cv.{metric}.std"] = float(np.std(values, ddof=1))
    return metrics
