"""What an export costs. A quantised export (int8, gguf_q8_0, gguf_q4_0): the float32 model and the export scored the
same way on the test split, with the evaluate stage's own scorers (greedy generation and perplexity, or
classification), and the change judged against `deploy.export_tolerance` (`Fidelity`). A bfloat16, GGUF, ONNX or
base export: its logits on the test prompts against the float32 model's (`LogitCheck`).

The metrics are the ones the test split has references for: exact match, token F1 and perplexity of the reference
answers (prompt/completion and chat rows), perplexity of the text (text rows), accuracy and macro F1 (a classifier
on labelled texts), character error rate and token F1 of answers about images (image_text rows, where their files are
at hand). Preference pairs and unanswered prompts have no reference to score against; their int8 export is measured
by size only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ftcore.columns import IMAGES_COLUMN
from ftcore.evaluation.config import LOWER_IS_BETTER

# The metric the tolerance applies to, by what the test split holds; the first listed is the primary one.
GENERATION = ("exact_match", "token_f1", "perplexity")
CLASSIFICATION = ("accuracy", "macro_f1")
TEXT = ("perplexity",)
IMAGE_ANSWERS = ("cer", "token_f1")
# Generation budget beyond the longest reference answer: a longer output cannot match it exactly, so both models
# stop there rather than at evaluate.max_new_tokens, which the deploy stage does not see.
SPARE_TOKENS = 8
BATCH_SIZE = 16


@dataclass(frozen=True)
class Fidelity:
    """The float32 model's and a quantised export's (`kind`) scores on the test split, and whether the export's loss
    on the primary metric is within the tolerance (absolute; relative for perplexity)."""

    kind: str
    float32: dict[str, float]
    exported: dict[str, float]
    primary: str
    tolerance: float

    @property
    def deltas(self) -> dict[str, float]:
        return {metric: self.exported[metric] - self.float32[metric] for metric in self.float32}

    @property
    def loss(self) -> float:
        """What the export lost on the primary metric (negative when it did better)."""
        before, after = self.float32[self.primary], self.exported[self.primary]
        return (after - before) / before if self.primary in LOWER_IS_BETTER else before - after

    @property
    def within_tolerance(self) -> bool:
        return self.loss <= self.tolerance

    def describe(self) -> str:
        unit = " (relative)" if self.primary in LOWER_IS_BETTER else ""
        verdict = "within" if self.within_tolerance else "BEYOND"
        return (f"{self.kind} {self.primary} {self.exported[self.primary]:.4g} against float32 "
                f"{self.float32[self.primary]:.4g}: "
                f"a loss of {self.loss:+.4g}{unit}, {verdict} the tolerance {self.tolerance:g}")


def scorable_metrics(test: pd.DataFrame, classifier: bool) -> tuple[str, ...]:
    """The metrics the test split has references for (none: nothing to compare)."""
    if classifier:
        return CLASSIFICATION if {"text", "label"} <= set(test.columns) else ()
    if IMAGES_COLUMN in test:  # the images' files, or only their names (a dataset read back from MLflow)
        return IMAGE_ANSWERS if all(Path(p).is_file() for p in json.loads(test[IMAGES_COLUMN].iloc[0])) else ()
    if "completion" in test or "messages" in test:
        return GENERATION
    return TEXT if "text" in test else ()


def split_scores(model, tokenizer, test: pd.DataFrame, metrics: tuple[str, ...], label: str) -> dict[str, float]:
    """`metrics` of one loaded model on the test rows; a terminal shows the examples done for `label` (which model
    this is: "float32 model", "int8 export")."""
    from ftcore.models.peft_methods import is_classifier

    if is_classifier(model):
        return classifier_scores(model, tokenizer, test, metrics, label)
    if IMAGES_COLUMN in test:
        return image_scores(model, tokenizer, test, metrics, label)
    return language_scores(model, tokenizer, test, metrics, label)


def image_scores(model, processor, test: pd.DataFrame, metrics: tuple[str, ...], label: str) -> dict[str, float]:
    from ftcore.evaluation.example_metrics import score
    from ftcore.evaluation.vision import answered, image_questions
    from ftcore.progress import progress_bar

    questions = image_questions(test)
    references = questions["raw_completion"].tolist()
    longest = max(len(processor.tokenizer(r, add_special_tokens=False)["input_ids"]) for r in references)
    with progress_bar(len(questions), f"{label}: answering") as bar:
        outputs = [o.strip() for o in answered(model, processor, questions, longest + SPARE_TOKENS, BATCH_SIZE,
                                                bar.update)]
    return {metric: score(metric, outputs, references)[0] for metric in metrics}


def classifier_scores(model, tokenizer, test: pd.DataFrame, metrics: tuple[str, ...], label: str) -> dict[str, float]:
    from ftcore.evaluation.classification import classification_metrics, classify
    from ftcore.progress import progress_bar

    references = test["label"].astype(str).tolist()
    with progress_bar(len(test), f"{label}: classifying") as bar:
        predicted = classify(model, tokenizer, test["text"].astype(str).tolist(), progress=bar.update)
    scores = classification_metrics(references, predicted, sorted(set(references) | set(predicted)))
    return {metric: scores[metric] for metric in metrics}


def language_scores(model, tokenizer, test: pd.DataFrame, metrics: tuple[str, ...], label: str) -> dict[str, float]:
    from ftcore.evaluation.config import EvaluateConfig
    from ftcore.evaluation.language import eval_examples, example_rows
    from ftcore.safety.config import SafetyConfig

    examples = eval_examples(test, tokenizer)
    longest = max(len(tokenizer(str(c), add_special_tokens=False)["input_ids"]) for c in examples["completion"])
    cfg = EvaluateConfig(metrics=list(metrics), max_new_tokens=longest + SPARE_TOKENS, batch_size=BATCH_SIZE,
                         latency_probes=0, bootstrap_resamples=0, safety=SafetyConfig(toxicity=None, bias=None))
    rows, _ = example_rows(model, tokenizer, examples, cfg, label)
    return {metric: rows[metric].value for metric in metrics}


@dataclass(frozen=True)
class LogitCheck:
    """An export run on the test prompts beside the float32 model it was made from: the largest logit difference,
    the share of positions whose top token agrees, whether its tokenizer gives the same ids, and `timings` (seconds,
    where the check measured them)."""

    how: str  # how the export was run: "read back by transformers' GGUF loader", "run by ONNX Runtime"
    prompts: int
    max_logit_diff: float
    top1_agreement: float
    same_tokens: bool
    timings: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        tokens = "the same token ids" if self.same_tokens else "DIFFERENT token ids"
        timed = "".join(f", {name.removesuffix('_s').replace('_', ' ')} {seconds * 1000:.3g} ms"
                        for name, seconds in self.timings.items())
        return (f"{self.how} on {self.prompts} prompts: top-1 agreement {self.top1_agreement:.3f}, max |logit "
                f"difference| {self.max_logit_diff:.3g}, {tokens}{timed}")

    def metrics(self) -> dict[str, float]:
        return {"top1_agreement": self.top1_agreement, "max_logit_diff": self.max_logit_diff,
                "same_tokens": float(self.same_tokens), **self.timings}


def compare_logits(reference, tokenizer, exported, exported_tokenizer, prompts: Sequence[str], how: str,
                   timings: dict[str, float] | None = None) -> LogitCheck:
    """Both models' logits on each prompt, one at a time (no padding to differ)."""
    import torch

    worst, agree, positions, same = 0.0, 0, 0, True
    with torch.no_grad():
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
            same &= exported_tokenizer(prompt)["input_ids"] == ids[0].tolist()
            want, got = reference(ids).logits[0], exported(ids).logits[0]
            worst = max(worst, (want - got).abs().max().item())
            agree += int((want.argmax(-1) == got.argmax(-1)).sum())
            positions += ids.shape[1]
    return LogitCheck(how, len(prompts), worst, agree / positions, same, timings or {})
