"""Reward functions: `@reward_function` registers `fn(prompts, completions, params, columns)` returning one score
per completion, configured in a recipe as `reward: {functions: [{function: NAME, weight: W, ...}]}`.

Like cleaning steps, reward functions live in a registry of ftcore/plugins.py (`REWARDS`): ftcore's built-ins
(below) and any installed package's `ftflow.reward_functions` entry point (ftflow's own `data_recipes.rewards` is
one), so a data engineer adds one by writing one decorated function. `columns` holds the row's other dataset
columns, one value per completion (`reward_columns`): the reference answer as `reference` (a prompt_completion
row's completion) or the pair's `chosen` and `rejected`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
from pydantic import ConfigDict, Field

from ftcore.errors import DataError
from ftcore.plugins import Plugin, Registry
from ftcore.schema import RecipeModel


class RewardParams(RecipeModel):
    """Base class of a reward function's parameters; unknown keys in the recipe are errors."""

    model_config = ConfigDict(extra="forbid")


RewardFn = Callable[[list[str], list[str], RewardParams, dict[str, list]], list[float]]


@dataclass(frozen=True)
class RegisteredReward(Plugin):
    """A reward function with its params model, as `ftflow rewards` lists it."""

    fn: RewardFn
    params: type[RewardParams] = RewardParams


# The built-ins are below, in this module.
REWARDS: Registry[RegisteredReward] = Registry("reward function", RegisteredReward, group="ftflow.reward_functions")


def reward_function(name: str, params: type[RewardParams] = RewardParams) -> Callable[[RewardFn], RewardFn]:
    """Register `fn(prompts, completions, params, columns) -> scores` under `name`, used in a recipe as
    `reward: {functions: [{function: name, ...params}]}`."""
    return REWARDS.register(name, params=params)


def score(name: str, params: dict, prompts: Sequence[str], completions: Sequence[str],
          columns: dict[str, list] | None = None) -> list[float]:
    """One registered function's scores, its output checked: a function returning the wrong number of scores is
    a bug in that function, reported by name."""
    registered = REWARDS.get(name)
    scores = registered.fn(list(prompts), list(completions), registered.params.model_validate(params),
                           columns or {})
    if len(scores) != len(completions):
        raise ValueError(f"reward function {name!r} ({registered.module}) returned {len(scores)} scores for "
                         f"{len(completions)} completions")
    return [float(s) for s in scores]


# The reference answer's name for reward functions: TRL reserves `completion` for the sampled answer.
REFERENCE = "reference"


def reward_columns(rows: pd.DataFrame) -> pd.DataFrame:
    """The columns of split rows that reward functions see besides the prompt."""
    columns = rows[[c for c in ("completion", "chosen", "rejected") if c in rows]]
    return columns.rename(columns={"completion": REFERENCE}).reset_index(drop=True)


# ---------------------------------------------------------------------------------------------------------------
# Built-ins

_WORD = re.compile(r"\w+")


class LengthParams(RewardParams):
    target_words: int = Field(20, ge=1)


@reward_function("length", params=LengthParams)
def length(prompts: list[str], completions: list[str], p: LengthParams, columns: dict[str, list]) -> list[float]:
    """1 at target_words words, falling linearly to 0 at none or twice as many."""
    return [max(0.0, 1 - abs(len(_WORD.findall(c)) - p.target_words) / p.target_words) for c in completions]


class ContainsParams(RewardParams):
    words: list[str] = Field(min_length=1)


@reward_function("contains", params=ContainsParams)
def contains(prompts: list[str], completions: list[str], p: ContainsParams, columns: dict[str, list]) -> list[float]:
    """The share of `words` the answer contains (whole words, any case)."""
    wanted = {w.lower() for w in p.words}
    return [len(wanted & {w.lower() for w in _WORD.findall(c)}) / len(wanted) for c in completions]


class ReferenceParams(RewardParams):
    column: str = Field(REFERENCE, description="the column holding the reference answer: reference (a "
                                               "prompt_completion row's completion) or chosen")


@reward_function("reference_f1", params=ReferenceParams)
def reference_f1(prompts: list[str], completions: list[str], p: ReferenceParams,
                 columns: dict[str, list]) -> list[float]:
    """Token F1 of the answer against the row's reference answer (or `column`, e.g. a pair's chosen answer)."""
    from ftcore.text_metrics import token_f1

    if p.column not in columns:
        raise DataError(f"reward function reference_f1: the dataset has no column {p.column!r} (has "
                         f"{', '.join(sorted(columns)) or 'none'}); set column: to the reference answer's column")
    return [token_f1(c, str(ref)) for c, ref in zip(completions, columns[p.column], strict=True)]


@reward_function("non_toxic")
def non_toxic(prompts: list[str], completions: list[str], p: RewardParams, columns: dict[str, list]) -> list[float]:
    """1 minus the lexicon toxicity score of the answer (the scorer the safety screen uses)."""
    from ftcore.safety.toxicity import lexicon_scores

    return [1.0 - s for s in lexicon_scores(completions)]
