"""The vision_language trainer: TRL's SFTTrainer handed the model's processor, on chats about images.

Rows go to the trainer as JSON text (the images' file paths, the prompt turns and the answer turn); the collator opens
the images and calls TRL's vision-language collator, which runs the processor (image tokens and pixel values) and puts
the loss on the answer only. Images are decoded batch by batch, never all at once. A chat's last assistant turn is
the answer learned; earlier turns are its prompt.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import pandas as pd

from ftcore.columns import IMAGES_COLUMN
from ftcore.data.images import content_parts, open_image
from ftcore.models.config import VisionParts
from ftcore.models.vision import part_modules
from ftcore.training.examples import check_room_for_answers
from ftcore.training.jobs import TrainerSetup


def chat_turns(messages: list[dict]) -> tuple[list[dict], list[dict]]:
    """(prompt turns, answer turn) of a chat with placeholders, as content parts for the processor's template."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    as_parts = [{"role": m["role"], "content": content_parts(m["content"])} for m in messages[: last + 1]]
    return as_parts[:last], as_parts[last:]


def image_examples(rows: pd.DataFrame, processor, max_length: int, classes: list[str]):
    """The rows as JSON text (images as file paths: `with_image_paths`), after checking that their prompts, image
    tokens included, leave room for the answers within max_length."""
    from datasets import Dataset

    turns = [chat_turns(json.loads(chat)) for chat in rows["messages"]]
    images = [json.loads(cell) for cell in rows[IMAGES_COLUMN]]
    check_room_for_answers([prompt_tokens(processor, prompt, paths) for (prompt, _), paths in zip(turns, images,
                                                                                                   strict=True)],
                           max_length)
    return Dataset.from_dict({IMAGES_COLUMN: rows[IMAGES_COLUMN].tolist(),
                              "prompt": [json.dumps(p, ensure_ascii=False) for p, _ in turns],
                              "completion": [json.dumps(c, ensure_ascii=False) for _, c in turns]})


def prompt_tokens(processor, prompt: list[dict], paths: list[str]) -> int:
    """Tokens of the rendered prompt with its images expanded into image tokens, as the model reads it."""
    text = processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    images = [open_image(p) for p in paths] or None
    encoded = processor(images=[images] if images else None, text=[text], add_special_tokens=False)
    return len(encoded["input_ids"][0])


@dataclass
class ImageCollator:
    """Opens a batch's images and hands it to TRL's vision-language collator (prompt/completion: loss on the
    completion); counts the time it spends (bench/ reads `seconds`)."""

    processor: object
    max_length: int
    seconds: float = 0.0
    batches: int = 0
    inner: object = field(init=False)

    def __post_init__(self):
        from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

        self.inner = DataCollatorForVisionLanguageModeling(processor=self.processor, max_length=self.max_length,
                                                           completion_only_loss=True)

    def __call__(self, rows: list[dict]) -> dict:
        start = time.perf_counter()
        batch = self.inner([{"images": [open_image(p) for p in json.loads(row[IMAGES_COLUMN])],
                             "prompt": json.loads(row["prompt"]), "completion": json.loads(row["completion"])}
                            for row in rows])
        self.seconds += time.perf_counter() - start
        self.batches += 1
        return batch


def vision_language_trainer(s: TrainerSetup):
    """TRL's SFTTrainer with the processor, the image collator, and the learning rates of train.vision."""
    from trl import SFTConfig, SFTTrainer

    class PartsTrainer(SFTTrainer):
        def create_optimizer(self, model=None):
            optimizer = super().create_optimizer(model)
            with_part_rates(optimizer, self.model, s.cfg.vision)
            return optimizer

    args = SFTConfig(**s.shared, max_length=s.cfg.max_length, completion_only_loss=True)
    trainer = PartsTrainer(model=s.model, args=args, train_dataset=s.train_rows, eval_dataset=s.eval_rows,
                           processing_class=s.tokenizer, data_collator=ImageCollator(s.tokenizer, s.cfg.max_length))
    whole_modules_as_their_originals(trainer.model)
    return trainer


def whole_modules_as_their_originals(model) -> None:
    """Modules trained whole beside an adapter (the projector) back in their original module's dtype. TRL casts every
    trainable weight of a 4-bit model to bf16 (QLoRA's recipe, which LoRA layers absorb by casting their input), but a
    plain linear layer in bf16 fed the full-precision tower's float32 features fails ("expected m1 and m2 to have the
    same dtype")."""
    from peft.utils.other import ModulesToSaveWrapper

    for module in model.modules():
        if isinstance(module, ModulesToSaveWrapper):
            dtype = next(module.original_module.parameters()).dtype
            for copy in module.modules_to_save.values():
                copy.to(dtype)


def with_part_rates(optimizer, model, vision: VisionParts) -> None:
    """Split the optimizer's parameter groups so that the vision tower and the projector learn at their own rates
    (train.vision.vision_tower_lr, projector_lr); before the scheduler is made, which reads each group's rate."""
    rates = {part: getattr(vision, f"{part}_lr") for part in ("vision_tower", "projector")}
    prefixes = {f"{name}.": rates[part] for part, name in part_modules(model).items() if rates.get(part)}
    if not prefixes:
        return
    rate_of = {id(p): next((lr for prefix, lr in prefixes.items() if name.startswith(prefix)), None)
               for name, p in model.named_parameters()}
    groups = []
    for group in optimizer.param_groups:
        by_rate: dict = {}
        for p in group["params"]:
            by_rate.setdefault(rate_of.get(id(p)) or group["lr"], []).append(p)
        groups += [{**group, "params": params, "lr": lr} for lr, params in by_rate.items()]
    optimizer.param_groups = groups


