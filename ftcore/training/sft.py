"""Supervised fine-tuning on prompt/completion rows through TRL's SFTTrainer (loss on completions only).

Per-step metrics go to `history.json` in the output folder rather than straight to MLflow, so the same record is
logged whether the stage ran now or came from the cache (and ftcore.tracking stays the only MLflow caller).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import pandas as pd

from ftcore.config import TrainConfig
from ftcore.fs import atomic_dir
from ftcore.hashing import hash_dir
from ftcore.models.load import load_causal_lm, load_tokenizer
from ftcore.outputs import ModelOutput, TrainOutput
from ftcore.training.plots import plot_loss

log = logging.getLogger(__name__)


def train_sft(base: ModelOutput, splits: dict[str, Path], cfg: TrainConfig, out_dir: Path) -> TrainOutput:
    model, tokenizer = load_for_training(base)
    train_rows, eval_rows = _load_split(splits["train"]), _load_split(splits.get("validation"))
    with tempfile.TemporaryDirectory(prefix="ftflow-trainer-") as scratch:
        trainer = build_trainer(model, tokenizer, train_rows, eval_rows, cfg, Path(scratch))
        started = time.perf_counter()
        result = trainer.train()
        runtime = time.perf_counter() - started
        final_eval = trainer.evaluate() if eval_rows is not None else {}
    history = [entry for entry in trainer.state.log_history if "step" in entry]
    with atomic_dir(out_dir) as tmp:
        save_trained(trainer.model, tokenizer, base, tmp)
        (tmp / "history.json").write_text(json.dumps(history, indent=1))
        plot_loss(history, tmp / "loss.png")
    metrics = {
        "train_loss": result.training_loss,
        "first_logged_loss": next((h["loss"] for h in history if "loss" in h), result.training_loss),
        "last_logged_loss": next((h["loss"] for h in reversed(history) if "loss" in h), result.training_loss),
        "steps": result.global_step,
        "runtime_s": runtime,
        "samples_per_s": len(train_rows) * cfg.epochs / runtime if cfg.max_steps is None else 0.0,
    }
    if "eval_loss" in final_eval:
        metrics["eval_loss"] = final_eval["eval_loss"]
    return TrainOutput(
        path=out_dir,
        content_hash=hash_dir(out_dir),
        model_path=out_dir / "model",
        adapter_path=out_dir / "adapter" if base.adapter_path else None,
        history_path=out_dir / "history.json",
        metrics=metrics,
        artifacts={"loss_plot": out_dir / "loss.png", "history": out_dir / "history.json"},
    )


def load_for_training(base: ModelOutput):
    """The base model with the init stage's adapter attached (trainable), or the base itself for full FT."""
    model = load_causal_lm(base.base_path)
    tokenizer = load_tokenizer(base.base_path)
    if base.adapter_path is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(base.adapter_path), is_trainable=True)
    return model, tokenizer


def build_trainer(model, tokenizer, train_rows, eval_rows, cfg: TrainConfig, work_dir: Path):
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(work_dir),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # transformers 5 reads a float < 1 as a ratio of total steps
        weight_decay=cfg.weight_decay,
        max_length=cfg.max_length,
        seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        use_cpu=_cpu_only(),
        bf16=False,
        gradient_checkpointing=False,
        completion_only_loss=True,
        dataloader_num_workers=0,
        disable_tqdm=False,  # else transformers derives it from its log level and prints every log dict instead
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_rows,
        eval_dataset=eval_rows,
        processing_class=tokenizer,
    )
    _show_progress_bar_only(trainer)
    return trainer


def _show_progress_bar_only(trainer) -> None:
    """Keep the training progress bar but drop the dict it prints at every logging step (history.json and
    MLflow keep those)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class ProgressBarOnly(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            pass

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(ProgressBarOnly())


def save_trained(model, tokenizer, base: ModelOutput, out: Path) -> None:
    """`model/` is self-contained (adapters merged into the base); `adapter/` keeps the small adapter too."""
    if base.adapter_path is not None:
        model.save_pretrained(out / "adapter")
        model = model.merge_and_unload()
    model.save_pretrained(out / "model", safe_serialization=True)
    tokenizer.save_pretrained(out / "model")


def _load_split(path: Path | None):
    if path is None:
        return None
    from datasets import Dataset

    rows = pd.read_parquet(path)[["prompt", "completion"]]
    return Dataset.from_pandas(rows, preserve_index=False) if len(rows) else None


def _cpu_only() -> bool:
    import torch

    return not torch.cuda.is_available()
