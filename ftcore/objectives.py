"""The objective table: what each objective (a recipe's `objective:`, formerly `task:`) trains on, how it is scored
and what applies to it. Every stage asks this table; none compares an objective's name.

Adding an objective is one entry here plus, when none of the existing ones fits, its trainer (a `TRAINERS` entry in
ftcore/training/trainers.py) and its scorer (a `SCORERS` entry in ftcore/evaluation/scorers.py); docs/architecture.md
lists the files. The table names its trainer and scorer rather than importing them: it sits below every stage
package, which all read it, and a stage's cache key covers only the code that stage runs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from ftcore.columns import DataFormat

ObjectiveName = Literal["sft", "dapt", "classification", "multitask", "dpo", "reward_model", "rl", "vision_language"]
DEFAULT_OBJECTIVE: ObjectiveName = "sft"

# Metrics of generated answers against reference answers.
GENERATION = ("exact_match", "token_f1", "rouge1", "rouge2", "rougeL", "bleu", "chrf")
# Of answers about images: text recognition (error rates, raw and with historical characters normalised),
# captions (CIDEr), visual questions (exact match, token F1).
IMAGE_ANSWERS = ("cer", "wer", "cer_normalized", "wer_normalized", "cider", "bleu", "rougeL", "exact_match", "token_f1")

# What the init stage puts on the base: the language-model head, a classifier over the train split's classes, or
# a one-output head scoring a (prompt, answer) text.
Head = Literal["language_model", "classes", "reward"]
# ftcore/training/trainers.py: TRAINERS.
TrainerName = Literal["language_model", "classifier", "preference", "pairwise_reward", "online_rl", "image_text"]
# ftcore/evaluation/scorers.py: SCORERS.
ScorerName = Literal["answers", "text", "classes", "preference_pairs", "reward_pairs", "rewards", "image_answers"]


class Objective(BaseModel):
    """One objective. The fields are the questions the stages ask; `trainer` and `scorer` name the code that
    trains and scores it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: ObjectiveName
    formats: tuple[DataFormat, ...]  # the data.format values it trains on
    metrics: tuple[str, ...]  # what evaluate.metrics may hold; the first is the gate's default metric
    head: Head
    trainer: TrainerName
    scorer: ScorerName
    answers_prompts: bool  # generates answers: the safety screen, the toxicity and bias gate rules apply
    references: bool = False  # scored against reference answers: few-shot prompting and domain metrics apply
    packs: bool = False  # several examples can be packed into one sequence (train.packing)
    continual: bool = False  # replay, regularisers and forgetting (continual, evaluate.forgetting)
    cross_validates: bool = False  # evaluate.cross_validation can train and score k folds
    tagged_sources: bool = False  # every source names its task (data.tasks): the multitask mixture
    sees_images: bool = False  # its rows show images: a vision-language model trains on them
    not_estimated: str | None = None  # why `ftflow plan` cannot estimate it; None: it can

    @property
    def classifies(self) -> bool:
        """The model is a sequence classifier: its base has no trained head worth scoring beside the candidate."""
        return self.head != "language_model"

    @property
    def samples_answers(self) -> bool:
        """Online RL: the policy samples groups of answers while it trains, scored by the recipe's `reward` (reward
        functions and a reward model). It is not evaluated on the validation split while training (that would mean
        sampling answers again: the evaluate stage does it once)."""
        return self.trainer == "online_rl"

    @property
    def train_section(self) -> str | None:
        """The `train.<section>` only this objective reads (train.preference, train.rl), if any."""
        return {"preference": "preference", "online_rl": "rl", "image_text": "vision"}.get(self.trainer)


_LANGUAGE = dict(formats=("prompt_completion", "messages"), metrics=(*GENERATION, "perplexity"), head="language_model",
                 trainer="language_model", scorer="answers", answers_prompts=True, references=True, packs=True,
                 continual=True, cross_validates=True)
OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    Objective(name="sft", **_LANGUAGE),
    Objective(name="multitask", **_LANGUAGE, tagged_sources=True),
    Objective(name="dapt", formats=("text",), metrics=("perplexity",), head="language_model",
              trainer="language_model", scorer="text", answers_prompts=False, packs=True, continual=True,
              cross_validates=True),
    Objective(name="classification", formats=("text_label",), metrics=("macro_f1", "accuracy"), head="classes",
              trainer="classifier", scorer="classes", answers_prompts=False, cross_validates=True),
    Objective(name="dpo", formats=("preference",), metrics=("reward_accuracy", "perplexity"), head="language_model",
              trainer="preference", scorer="preference_pairs", answers_prompts=True,
              not_estimated="preference optimisation runs the chosen and the rejected answer, and a reference model"),
    Objective(name="reward_model", formats=("preference",), metrics=("reward_accuracy",), head="reward",
              trainer="pairwise_reward", scorer="reward_pairs", answers_prompts=False,
              not_estimated="a reward model has a one-output head, and scores two answers per example"),
    # rl reads only the prompts (and hands the other columns, e.g. a reference completion, to the reward functions).
    Objective(name="rl", formats=("prompt_completion", "preference"), metrics=("mean_reward",), head="language_model",
              trainer="online_rl", scorer="rewards", answers_prompts=True,
              not_estimated="online RL generates several answers per prompt and scores them with reward models"),
    # Chats about images (captions, transcriptions, visual questions): the first metric (the gate's default) is CER;
    # a captioning recipe names cider first in evaluate.metrics.
    Objective(name="vision_language", formats=("image_text",), metrics=IMAGE_ANSWERS, head="language_model",
              trainer="image_text", scorer="image_answers", answers_prompts=True, references=True,
              sees_images=True),
)}


def objectives_where(question: str) -> list[str]:
    """The names of the objectives for which `question` (a field or property of Objective) holds, for messages."""
    return [name for name, objective in OBJECTIVES.items() if getattr(objective, question)]
