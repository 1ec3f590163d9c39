"""Deterministic train/validation/test split and the prompt/completion templating."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ftcore.columns import LABEL_COLUMN
from ftcore.data.config import DataConfig, SplitConfig
from ftcore.data.formats import TASK
from ftcore.errors import DataError
from ftcore.models.prompting import Prompting, prompting_of

SPLITS = ("train", "validation", "test")


def assign_splits(n: int, labels: pd.Series | None, holdout: np.ndarray, cfg: SplitConfig,
                  test_fraction: float, groups: pd.Series | None = None) -> np.ndarray:
    """The split of each of `n` rows. Holdout rows (from data.test_sources) are the test split; the others are
    shuffled with the seed and test and validation are carved off the front, per label when there are labels
    (stratified), so every split keeps the label distribution, or whole groups at a time (split.group_by). Each
    requested split gets at least one row."""
    assignment = np.full(n, "train", dtype=object)
    assignment[holdout] = "test"
    rng = np.random.default_rng(cfg.seed)
    candidates = np.flatnonzero(~holdout)
    if groups is not None:
        return _assign_groups(assignment, candidates, groups.astype(str).to_numpy()[candidates], cfg, test_fraction,
                              rng)
    if labels is None:
        groups = [candidates]
    else:
        group_labels = labels.to_numpy()[candidates]
        groups = [candidates[group_labels == label] for label in sorted(set(group_labels))]
    for group in groups:
        shuffled = group[rng.permutation(len(group))]
        n_test, n_val = _count(len(group), test_fraction), _count(len(group), cfg.validation)
        assignment[shuffled[:n_test]] = "test"
        assignment[shuffled[n_test: n_test + n_val]] = "validation"
    return assignment


def _assign_groups(assignment: np.ndarray, candidates: np.ndarray, groups: np.ndarray, cfg: SplitConfig,
                   test_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Whole groups to test, then validation, in a seeded order, each until it holds its share of the rows."""
    names, sizes = np.unique(groups, return_counts=True)
    wanted = {"test": test_fraction, "validation": cfg.validation}
    needed = 1 + sum(fraction > 0 for fraction in wanted.values())
    if len(names) < needed:
        raise DataError(f"data.split.group_by {cfg.group_by!r}: {len(names)} distinct value(s) for {needed} splits; "
                        "every split needs a group of its own: add data, or split without group_by")
    held = {split: 0 for split in wanted}
    for k, g in enumerate(rng.permutation(len(names))):
        groups_left = len(names) - k
        split = next((s for s, fraction in wanted.items() if fraction > 0 and
                      (held[s] == 0 or held[s] + sizes[g] / 2 <= fraction * len(candidates))), None)
        if split is None or groups_left == 1:  # the last group always trains: train never ends up empty
            continue
        assignment[candidates[groups == names[g]]] = split
        held[split] += sizes[g]
    return assignment


def check_classes(labels: pd.Series, assignment: np.ndarray) -> None:
    """A classifier needs two classes in its train split: with one it learns nothing, and evaluate's baseline cannot
    even be fitted. Refused here, before any training, naming the classes and their rows."""
    counts = labels.value_counts()
    if len(counts) < 2:
        raise DataError(f"clean_balance: the label column has one class ({counts.index[0]!r}) in all {counts.iloc[0]} "
                        f"rows kept; classification needs at least two: check the sources' label column")
    in_train = labels[assignment == "train"].value_counts()
    if len(in_train) < 2:
        others = ", ".join(f"{label!r}: {n} row(s)" for label, n in counts.items() if label not in in_train)
        raise DataError(f"clean_balance: the train split has {len(in_train)} class(es) "
                        f"({', '.join(map(repr, in_train.index))}); the rows of the others ({others}) all went to the "
                        f"test and validation splits (or come from data.test_sources): add rows of those classes")


def split_rows(rows: pd.DataFrame, cfg: SplitConfig) -> dict[str, pd.DataFrame]:
    """An in-memory table split as `assign_splits` would (no holdout rows), rows in their original order."""
    labels = rows[LABEL_COLUMN].astype(str) if LABEL_COLUMN in rows else None
    names = assign_splits(len(rows), labels, np.zeros(len(rows), dtype=bool), cfg, cfg.test_or_default)
    return {name: rows[names == name].reset_index(drop=True) for name in SPLITS}


def _count(n: int, fraction: float) -> int:
    return max(1, math.floor(n * fraction)) if fraction > 0 else 0


def format_for_model(rows: pd.DataFrame, cfg: DataConfig) -> pd.DataFrame:
    """`prompt`/`completion` become exactly what the model sees; the cleaned originals stay as `raw_*`. In a
    multitask recipe each row gets its task's templates (data.tasks), else data's. Preference pairs are templated
    only when the recipe sets a template (their prompts usually come formatted, e.g. HH-RLHF's dialogues): then the
    prompt gets prompt_template and both answers completion_template, so pairs read like the SFT data before them."""
    if cfg.format == "preference":
        return templated_pairs(rows, cfg) if {"prompt_template", "completion_template"} & cfg.model_fields_set else rows
    if cfg.format != "prompt_completion":
        return rows
    tasks = rows[TASK] if TASK in rows else pd.Series(None, index=rows.index, dtype=object)

    def templated(column: str) -> list[str]:
        default = getattr(cfg, f"{column}_template")
        return [_template(cfg, task, column, default).replace("{" + column + "}", value)
                for value, task in zip(rows[column], tasks, strict=True)]

    return rows.assign(raw_prompt=rows["prompt"], raw_completion=rows["completion"],
                       prompt=templated("prompt"), completion=templated("completion"))


def data_prompting(cfg: DataConfig) -> Prompting:
    """How `format_for_model` presents prompts to the model, as recorded with it: a multitask recipe whose tasks
    bring their own prompt templates has no one template (raw), nor have preference pairs without one set."""
    own_templates = any(task.prompt_template for task in cfg.tasks.values())
    templated = (cfg.format == "prompt_completion" and not own_templates) or \
        (cfg.format == "preference" and "prompt_template" in cfg.model_fields_set)
    return prompting_of(cfg.format, cfg.prompt_template if templated else None, cfg.completion_template)


def templated_pairs(rows: pd.DataFrame, cfg: DataConfig) -> pd.DataFrame:
    def fill(template: str, column: str, placeholder: str) -> list[str]:
        return [template.replace("{" + placeholder + "}", value) for value in rows[column]]

    return rows.assign(raw_prompt=rows["prompt"], prompt=fill(cfg.prompt_template, "prompt", "prompt"),
                       chosen=fill(cfg.completion_template, "chosen", "completion"),
                       rejected=fill(cfg.completion_template, "rejected", "completion"))


def _template(cfg: DataConfig, task: str | None, column: str, default: str) -> str:
    own = getattr(cfg.tasks[task], f"{column}_template") if task in cfg.tasks else None
    return own or default


def mix_tasks(train: pd.DataFrame, cfg: DataConfig, seed: int) -> tuple[pd.DataFrame, dict[str, float]]:
    """The train split resampled so that each task's share of the rows is its weight over the sum of weights
    (data.tasks), keeping the split's size: a task with too few rows for its share is repeated (every row as often
    as it fits, the remainder drawn without replacement), one with too many is subsampled. Seeded."""
    rng = np.random.default_rng(seed)
    total = sum(mix.weight for mix in cfg.tasks.values())
    picked, metrics = [], {}
    for task, mix in sorted(cfg.tasks.items()):
        rows = np.flatnonzero(train[TASK].to_numpy() == task)
        want = round(len(train) * mix.weight / total)
        if len(rows) == 0 or want == 0:
            metrics[f"mixture.{task}.rows"] = 0
            continue
        repeats, rest = divmod(want, len(rows))
        chosen = np.concatenate([np.tile(rows, repeats), rng.choice(rows, rest, replace=False)])
        picked.append(chosen)
        metrics[f"mixture.{task}.rows"] = len(chosen)
        metrics[f"mixture.{task}.available"] = len(rows)
    order = np.concatenate(picked)
    return train.iloc[rng.permutation(order)].reset_index(drop=True), metrics
