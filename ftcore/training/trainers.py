"""The trainers of the objective table (`Objective.trainer`): for each, the rows it trains on
(ftcore/training/examples.py) and how it is built from the arguments every trainer shares. TRL's SFTTrainer
trains the language-model objectives (with the processor, the vision-language one: ftcore/training/vision.py), a
Trainer with the balance stage's loss trains classifiers, and TRL's alignment trainers the rest
(ftcore/training/alignment_trainers.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ftcore.objectives import TrainerName
from ftcore.training import alignment_trainers as alignment
from ftcore.training.examples import class_examples, language_examples, pair_examples, prompt_examples
from ftcore.training.jobs import TrainerSetup
from ftcore.training.vision import image_examples, vision_language_trainer


@dataclass(frozen=True)
class Trainer:
    examples: Callable  # (rows, tokenizer, max_length, classes) -> datasets.Dataset
    build: Callable[[TrainerSetup], Any]


def language_model_trainer(s: TrainerSetup):
    """TRL's SFTTrainer: loss on completions (prompt_completion), on assistant turns (messages, whose mask comes with
    the rows) or on every token (dapt's text)."""
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(**s.shared, max_length=s.cfg.max_length, packing=s.cfg.packing, completion_only_loss=True)
    trainer = SFTTrainer(model=s.model, args=args, train_dataset=s.train_rows, eval_dataset=s.eval_rows,
                         processing_class=s.tokenizer)
    if s.cfg.packing and not uses_flash_attention(s.model):
        trainer.data_collator = packed_rows_collator(s.tokenizer)
    return trainer


def classification_trainer(s: TrainerSetup):
    """A Trainer whose loss is the balance stage's (class weights or focal loss), else cross-entropy."""
    from transformers import DataCollatorWithPadding, TrainingArguments

    from ftcore.training.classification import ClassLossTrainer, loss_for

    job = s.run.job
    return ClassLossTrainer(model=s.model, args=TrainingArguments(**s.shared), train_dataset=s.train_rows,
                            eval_dataset=s.eval_rows, processing_class=s.tokenizer,
                            data_collator=DataCollatorWithPadding(s.tokenizer),
                            loss_fn=loss_for(job.loss_spec(), job.base.classes))


TRAINERS: dict[TrainerName, Trainer] = {
    "language_model": Trainer(language_examples, language_model_trainer),
    "classifier": Trainer(class_examples, classification_trainer),
    "preference": Trainer(pair_examples, alignment.preference_trainer),
    "pairwise_reward": Trainer(pair_examples, alignment.reward_model_trainer),
    "online_rl": Trainer(prompt_examples, alignment.rl_trainer),
    "image_text": Trainer(image_examples, vision_language_trainer),
}


def uses_flash_attention(model) -> bool:
    return "flash" in str(getattr(model.config, "_attn_implementation", "") or "")


def packed_rows_collator(tokenizer):
    """Packed batches as rows of at most max_length tokens, each example in its row marked by positions that
    restart at 0 and no attention mask, from which transformers builds a block-diagonal causal mask: an example
    attends only to itself.

    TRL's packing instead joins the whole batch into one sequence (padding-free), which FlashAttention's
    variable-length kernels run as separate sequences, but SDPA and eager attention (CPU, most GPUs without
    flash-attn) compute over the whole joined sequence: 8 rows of 256 tokens cost as one of 2,048, 8x the attention
    work. Measured on bench/train_methods.py's 33.5M Llama (1 thread): joined 0.95x the tokens/s of padding, rows
    1.49x, with the same loss (docs/benchmarks.md)."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    rows = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, return_position_ids=True)

    def collate(examples: list[dict]) -> dict:
        batch = rows(examples)
        batch.pop("attention_mask")  # with a mask, transformers would not look for packed sequences in the positions
        # An example's first token is not predicted from the end of the example before it (as TRL does when joined).
        batch["labels"][batch["position_ids"] == 0] = -100
        return batch

    return collate
