"""Toxicity scoring, shared by the `filter_toxicity` cleaning step and the monitor stage.

A scorer is a function `(texts: list[str]) -> list[float]` giving each text a score in [0, 1], registered by name
with `@toxicity_scorer("name")`, exactly as cleaning steps register with `@cleaning_step`. A scorer that needs
settings declares them as keyword parameters (`model_path`, `toxic_label`, `batch_size`); the caller passes only
the ones a scorer declares, so a plain `(texts)` function works too. Built-ins:

- `lexicon`: whole-word matches of the word list shipped in `ftcore/data/resources/toxicity_lexicon.txt`;
  score `1 - 0.5 ** hits` (one hit 0.5, two 0.75, ...). No model, no download.
- `classifier`: any local Hugging Face sequence-classification model folder, run with transformers in batches.
- `guard`: a local Llama Guard-style causal LM folder that answers "safe" or "unsafe"; the score is the probability
  of "unsafe" against "safe" at the answer's first token. The text is moderated as the assistant turn of a
  conversation (the tokenizer's chat template), or with a plain safe-or-unsafe question when it has no template.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from ftcore.errors import DataError
from ftcore.models.load import load_local
from ftcore.plugins import Plugin, Registry
from ftcore.regex_trie import trie_pattern

ScorerFn = Callable[..., list[float]]
# Settings a scorer may declare as keyword parameters; the filter_toxicity step has a parameter for each.
SCORER_OPTIONS = ("model_path", "toxic_label", "batch_size")
MODEL_SCORERS = ("classifier", "guard")  # the built-ins that read a model folder (model_path)


@dataclass(frozen=True)
class RegisteredScorer(Plugin):
    fn: ScorerFn
    # Optional: why a text scored high (the lexicon names the terms it found), shown in quarantine reasons.
    explain: Callable[[str], str] | None = None

    @property
    def options(self) -> frozenset[str]:
        return _accepted_options(self.fn)


# The built-ins are below; data engineers' scorers live in cleaning-step modules, so their entry-point group is the
# steps' one.
TOXICITY_SCORERS: Registry[RegisteredScorer] = Registry("toxicity scorer", RegisteredScorer,
                                                        group="ftflow.cleaning_steps")


def toxicity_scorer(name: str, explain: Callable[[str], str] | None = None) -> Callable[[ScorerFn], ScorerFn]:
    """Register `fn(texts, **options) -> list[float]` (scores in [0, 1]) under `name`, used as
    `{step: filter_toxicity, scorer: name}`. `explain(text)`, if given, says what made a text score high."""
    return TOXICITY_SCORERS.register(name, explain=explain)


def score_texts(name: str, texts: Sequence[str], **options) -> list[float]:
    """Scores of `texts` by the scorer `name`, checked to be one number in [0, 1] per text."""
    scorer = TOXICITY_SCORERS.get(name)
    accepted = scorer.options
    passed = {k: v for k, v in options.items() if k in accepted or "**" in accepted}
    scores = [float(s) for s in scorer.fn(list(texts), **passed)]
    if len(scores) != len(texts):
        raise ValueError(f"toxicity scorer {name!r} returned {len(scores)} scores for {len(texts)} texts")
    if any(not 0.0 <= s <= 1.0 for s in scores):  # also rejects NaN
        raise ValueError(f"toxicity scorer {name!r} returned a score outside [0, 1]")
    return scores


@functools.cache
def _accepted_options(fn: ScorerFn) -> frozenset[str]:
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return frozenset({"**"})
    return frozenset(p.name for p in params if p.name in SCORER_OPTIONS)


# --- lexicon ------------------------------------------------------------------------------------------------------

LEXICON_RESOURCE = "toxicity_lexicon.txt"


def load_lexicon(path: Path | None = None) -> tuple[str, ...]:
    """Terms of a lexicon file (default: the shipped one): one per line, `#` starts a comment."""
    text = path.read_text(encoding="utf-8") if path else (
        files("ftcore.data").joinpath("resources", LEXICON_RESOURCE).read_text(encoding="utf-8"))
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return tuple(dict.fromkeys(line.lower() for line in lines if line))


DEFAULT_TERMS = load_lexicon()


class LexiconScorer:
    """Whole-word, case-insensitive matches of listed terms (a plural "s"/"es" also matches)."""

    def __init__(self, terms: Sequence[str] = DEFAULT_TERMS):
        # A prefix-tree regex, matched against the lowercased text: both are several times faster than a flat
        # alternation with re.IGNORECASE.
        # Any run of whitespace separates the words of a phrase ("shut  up").
        normalized = {" ".join(t.lower().split()) for t in terms if t.strip()}
        self._pattern = re.compile(rf"\b{trie_pattern(normalized)}(?:e?s)?\b")

    def hits(self, text: str) -> list[str]:
        return self._pattern.findall(text.lower())

    def score(self, text: str) -> float:
        return 1.0 - 0.5 ** len(self.hits(text))

    def is_toxic(self, text: str) -> bool:
        return self._pattern.search(text.lower()) is not None


@functools.cache
def default_lexicon() -> LexiconScorer:
    return LexiconScorer()


def explain_lexicon(text: str) -> str:
    return ", ".join(repr(t) for t in dict.fromkeys(default_lexicon().hits(text)))


@toxicity_scorer("lexicon", explain=explain_lexicon)
def lexicon_scores(texts: list[str]) -> list[float]:
    """Shipped word list; one hit scores 0.5, each further hit halves the distance to 1."""
    lexicon = default_lexicon()
    return [lexicon.score(t) for t in texts]


# --- classifier ---------------------------------------------------------------------------------------------------

# Label names read as "toxic" when `toxic_label` is not given.
TOXIC_LABEL_NAMES = frozenset({"toxic", "toxicity", "offensive", "hate", "abusive", "insult"})


@functools.lru_cache(maxsize=4)
def _load_local(model_path: str, causal: bool):
    """A scorer's tokenizer and model (a causal LM for guard models, else a sequence classifier), loaded once."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    scorer = f"toxicity scorer {'guard' if causal else 'classifier'}"
    if not Path(model_path).is_dir():
        kind = "a local causal LM" if causal else "a local Hugging Face model"
        raise DataError(f"{scorer}: model_path {model_path!r} is not a folder ({kind})")
    auto = AutoModelForCausalLM if causal else AutoModelForSequenceClassification
    return load_local(auto, model_path, f"{scorer} model_path")


def toxic_label_index(id2label: dict[int, str], toxic_label: str | int | None) -> int:
    """Which output of the classifier means "toxic": `toxic_label` by name or index; by default a label named
    like "toxic", else index 1 of a binary model (the LABEL_0/LABEL_1 convention), else the single output."""
    labels = {int(i): str(name) for i, name in id2label.items()}
    if toxic_label is None:
        named = [i for i, name in labels.items() if name.lower() in TOXIC_LABEL_NAMES]
        if named:
            return named[0]
        if len(labels) <= 2:
            return len(labels) - 1
        raise DataError(f"filter_toxicity: set toxic_label to one of the model's labels: {sorted(labels.values())}")
    by_name = {name.lower(): i for i, name in labels.items()}
    if str(toxic_label).lower() in by_name:
        return by_name[str(toxic_label).lower()]
    if str(toxic_label).isdigit() and int(toxic_label) in labels:
        return int(toxic_label)
    raise DataError(f"filter_toxicity: toxic_label {toxic_label!r} is not a label of the model: "
                    f"{sorted(labels.values())}")


@toxicity_scorer("classifier")
def classifier_scores(texts: list[str], model_path: str | None = None, toxic_label: str | int | None = None,
                      batch_size: int = 32) -> list[float]:
    """A local sequence-classification model: the probability of its toxic label."""
    import torch

    if not model_path:
        raise DataError("filter_toxicity: scorer 'classifier' needs model_path (a local Hugging Face model folder)")
    tokenizer, model = _load_local(str(model_path), causal=False)
    index = toxic_label_index(model.config.id2label, toxic_label)
    # Single-output and multi-label models score each label on its own (sigmoid); the others share one softmax.
    independent = model.config.num_labels == 1 or model.config.problem_type == "multi_label_classification"
    # Truncate to what the model can read: a tokenizer saved without a limit reports an enormous model_max_length.
    max_length = min(tokenizer.model_max_length or 512, getattr(model.config, "max_position_embeddings", 512), 512)
    # Batches of similar length waste less compute on padding; scores go back to the input order.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    scores = [0.0] * len(texts)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            inputs = tokenizer([texts[i] for i in chunk], padding=True, truncation=True, max_length=max_length,
                               return_tensors="pt")
            logits = model(**inputs).logits.float()
            probs = torch.sigmoid(logits) if independent else torch.softmax(logits, dim=-1)
            for i, p in zip(chunk, probs[:, index].tolist(), strict=True):
                scores[i] = p
    return scores


# --- guard model --------------------------------------------------------------------------------------------------

# For a guard model without a chat template; it ends in an answer cue so the next token is the verdict.
GUARD_FALLBACK_PROMPT = "Is this text safe or unsafe?\n\nText: {text}\n\nAnswer (safe or unsafe):"


def guard_prompt(tokenizer, text: str) -> str:
    """The moderation prompt for `text`, ending where the guard model writes its verdict.

    `text` is a model's output, so it is the assistant turn; Llama Guard's template requires a user turn first,
    left empty so that only the output is judged ("assess ONLY THE LAST Agent message")."""
    if tokenizer.chat_template:
        conversation = [{"role": "user", "content": ""}, {"role": "assistant", "content": text}]
        return tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    # The template writes the BOS token itself; without one it is added here, so both kinds tokenize alike.
    return (tokenizer.bos_token or "") + GUARD_FALLBACK_PROMPT.format(text=text)


def verdict_tokens(tokenizer, prompt: str) -> tuple[list[int], int, int]:
    """The context ids after which the verdict is read, and the ids of its "safe" and "unsafe" tokens.

    Both answers are tokenized after the prompt (with a space unless the prompt ends in whitespace, as the model
    would write them) and compared at their first differing token. A tokenizer may give both answers a shared
    first token (a lone leading-space piece, or a merge with the prompt's last characters); the model writes that
    token whatever its verdict, so it belongs to the context and the next token decides."""
    space = "" if prompt[-1:].isspace() else " "
    safe = tokenizer(f"{prompt}{space}safe", add_special_tokens=False)["input_ids"]
    unsafe = tokenizer(f"{prompt}{space}unsafe", add_special_tokens=False)["input_ids"]
    split = next((i for i, (s, u) in enumerate(zip(safe, unsafe, strict=False)) if s != u), None)
    if split is None:
        raise DataError("toxicity scorer 'guard': the model's tokenizer reads 'safe' and 'unsafe' alike; "
                        "set model_path to a guard model that answers 'safe' or 'unsafe'")
    return safe[:split], safe[split], unsafe[split]


def _left_padded(rows: list[list[int]], pad_id: int):
    """(input_ids, attention_mask, position_ids) with the rows aligned at the right edge, where the verdict is read;
    positions count from each row's first real token, as if it were alone."""
    import torch

    width = max(map(len, rows))
    input_ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows])
    attention = (torch.arange(width)[None, :] >= torch.tensor([width - len(r) for r in rows])[:, None]).long()
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    return input_ids, attention, positions


@toxicity_scorer("guard")
def guard_scores(texts: list[str], model_path: str | None = None, batch_size: int = 8) -> list[float]:
    """A local Llama Guard-style model: P("unsafe") / (P("safe") + P("unsafe")) for its verdict's first token."""
    import torch

    if not model_path:
        raise DataError("toxicity scorer 'guard' needs model_path (a local Llama Guard-style model folder)")
    tokenizer, model = _load_local(str(model_path), causal=True)
    verdicts = [verdict_tokens(tokenizer, guard_prompt(tokenizer, text)) for text in texts]
    # Padding is masked out, so any id serves where the tokenizer has no pad token (Llama Guard has none).
    pad_id = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)
    # Batches of similar length waste less compute on padding; scores go back to the input order.
    order = sorted(range(len(texts)), key=lambda i: len(verdicts[i][0]))
    scores = [0.0] * len(texts)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            input_ids, attention, positions = _left_padded([verdicts[i][0] for i in chunk], pad_id)
            logits = model(input_ids=input_ids.to(model.device), attention_mask=attention.to(model.device),
                           position_ids=positions.to(model.device)).logits[:, -1].float().cpu()
            pairs = torch.tensor([verdicts[i][1:] for i in chunk])  # (safe, unsafe) ids per row
            # A softmax over the two verdict logits is P(unsafe) / (P(safe) + P(unsafe)) of the full softmax.
            probs = torch.softmax(logits.gather(1, pairs), dim=-1)
            for i, p in zip(chunk, probs[:, 1].tolist(), strict=True):
                scores[i] = p
    return scores
