"""Scoring the alignment objectives on the test split (docs/alignment.md):

- dpo: `reward_accuracy`, the share of held-out pairs whose chosen answer gets the higher implicit reward
  log pi(answer) - log pi_ref(answer), with the starting model (`base`) as the reference; ties count half, so the
  base itself scores exactly 0.5. `reward_margin` is the mean chosen-minus-rejected implicit reward in nats (beta
  1), and `perplexity` that of the chosen answers.
- reward_model: `reward_accuracy`, the share of pairs the model scores chosen above rejected, against the
  baseline that prefers the longer answer (`length`, the gate's reference while there is no champion: an untrained
  head scores at random).
- rl: `mean_reward`, the recipe's reward of each model's greedy answers to the test prompts.

A terminal shows each model's pass over the test pairs (or prompts): examples done of the total.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from ftcore.alignment.config import RewardConfig
from ftcore.evaluation.bootstrap import perplexity_of
from ftcore.evaluation.config import EvaluateConfig
from ftcore.evaluation.intervals import ModelScores, Rows
from ftcore.models.generate import completion_nlls, generate
from ftcore.models.load import load_trained
from ftcore.progress import progress_bar

LENGTH_BASELINE = "length"


def pairwise_wins(chosen: np.ndarray, rejected: np.ndarray) -> np.ndarray:
    """Per pair: 1 when chosen is scored above rejected, 0.5 for a tie, else 0 (their mean is the accuracy)."""
    return (chosen > rejected) + 0.5 * (chosen == rejected)


def pair_scores(chosen: np.ndarray, rejected: np.ndarray) -> dict[str, Rows]:
    """`reward_accuracy` (ties count half) and `reward_margin` (mean chosen-minus-rejected score) of scored pairs."""
    return {"reward_accuracy": Rows(pairwise_wins(chosen, rejected).astype(float)),
            "reward_margin": Rows(np.asarray(chosen - rejected, dtype=float))}


def evaluate_policies_on_pairs(models: dict[str, Path], test: pd.DataFrame, cfg: EvaluateConfig,
                               reference: str) -> tuple[ModelScores, dict[str, float], pd.DataFrame]:
    """dpo: every model's implicit reward accuracy and margin against the `reference` model (the starting one)."""
    prompts = test["prompt"].tolist()
    logps: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for name, path in models.items():
        model, tokenizer = load_trained(path)
        with progress_bar(2 * len(prompts), f"{name}: chosen and rejected answers") as bar:
            chosen = np.array(completion_nlls(model, tokenizer, prompts, test["chosen"].tolist(), cfg.batch_size,
                                              bar.update))
            rejected = completion_nlls(model, tokenizer, prompts, test["rejected"].tolist(), cfg.batch_size,
                                       bar.update)
        logps[name] = (-chosen[:, 0], -np.array([nll for nll, _ in rejected]), chosen)
    reference_chosen, reference_rejected, _ = logps[reference]
    scores: ModelScores = {}
    predictions = test[["prompt", "chosen", "rejected"]].reset_index(drop=True)
    for name, (chosen, rejected, chosen_nlls) in logps.items():
        scores[name] = pair_scores(chosen - reference_chosen, rejected - reference_rejected)
        if "perplexity" in cfg.metrics:
            scores[name]["perplexity"] = Rows(chosen_nlls, perplexity_of)
        predictions[f"{name}.margin"] = scores[name]["reward_margin"].values
    return scores, {}, predictions


def evaluate_reward_models(models: dict[str, Path], test: pd.DataFrame,
                           cfg: EvaluateConfig) -> tuple[ModelScores, dict[str, float], pd.DataFrame]:
    """reward_model: every model's pairwise accuracy, and the longer-answer baseline's."""
    predictions = test[["prompt", "chosen", "rejected"]].reset_index(drop=True)
    lengths = {side: test[side].str.len().to_numpy() for side in ("chosen", "rejected")}
    scores: ModelScores = {LENGTH_BASELINE: {"reward_accuracy": pair_scores(lengths["chosen"],
                                                                            lengths["rejected"])["reward_accuracy"]}}
    for name, path in models.items():
        model, tokenizer = load_trained(path)
        with progress_bar(2 * len(test), f"{name}: scoring chosen and rejected answers") as bar:
            sides = {side: reward_scores(model, tokenizer, test["prompt"].tolist(), test[side].tolist(),
                                         cfg.batch_size, bar.update)
                     for side in ("chosen", "rejected")}
        scores[name] = pair_scores(sides["chosen"], sides["rejected"])
        for side, values in sides.items():
            predictions[f"{name}.{side}_score"] = values
    return scores, {}, predictions


def reward_scores(model, tokenizer, prompts: list[str], answers: list[str], batch_size: int,
                  progress: Callable[[int], object] | None = None) -> np.ndarray:
    """A reward model's score of each prompt followed by its answer (the text RewardTrainer trains on);
    `progress(n)` after each batch of n."""
    from ftcore.evaluation.classification import class_logits

    texts = [p + a for p, a in zip(prompts, answers, strict=True)]
    return class_logits(model, tokenizer, texts, batch_size, progress=progress).squeeze(-1).numpy()


def evaluate_policies_on_reward(models: dict[str, Path], test: pd.DataFrame, cfg: EvaluateConfig,
                                reward: RewardConfig,
                                reward_model_dir: Path | None) -> tuple[ModelScores, dict[str, float], pd.DataFrame]:
    """rl: the mean reward of every model's greedy answers to the test prompts."""
    from ftcore.alignment.rewards import reward_columns
    from ftcore.training.alignment_trainers import reward_functions

    rewards, weights = reward_functions(reward, reward_model_dir)
    prompts = test["prompt"].tolist()
    columns = reward_columns(test).to_dict(orient="list")
    predictions = pd.DataFrame({"prompt": prompts})
    scores: ModelScores = {}
    metrics: dict[str, float] = {}
    for name, path in models.items():
        model, tokenizer = load_trained(path)
        with progress_bar(len(prompts), f"{name}: answering") as bar:
            answers = generate(model, tokenizer, prompts, cfg.max_new_tokens, cfg.batch_size, bar.update)
        total = np.zeros(len(prompts))
        for fn, weight in zip(rewards, weights, strict=True):
            values = score_answers(fn, prompts, answers, columns, cfg.batch_size)
            metrics[f"{name}.reward.{_reward_name(fn)}"] = float(np.mean(values))
            total += weight * np.asarray(values)
        scores[name] = {"mean_reward": Rows(total)}
        predictions[name], predictions[f"{name}.reward"] = answers, total
    return scores, metrics, predictions


def score_answers(fn, prompts: list[str], answers: list[str], columns: dict[str, list], batch_size: int) -> list:
    """One reward's scores: a reward model's (with its own tokenizer) or a reward function's."""
    tokenizer = getattr(fn, "ftflow_tokenizer", None)
    if tokenizer is not None:
        return reward_scores(fn, tokenizer, prompts, answers, batch_size).tolist()
    return fn(prompts, answers, **columns)


def _reward_name(fn) -> str:
    return "model" if getattr(fn, "ftflow_tokenizer", None) is not None else fn.__name__
