"""The train stage: one loop for every objective (`task`), on TRL's SFTTrainer for the language-model objectives,
a Trainer with the balance stage's loss for classification, and TRL's alignment trainers for dpo, reward_model and
rl (ftcore/alignment/trainers.py). ftcore/training/examples.py says what each trains on.

Per-step metrics go to `history.json` in the output folder rather than straight to MLflow, so the same record is
logged whether the stage ran now or came from the cache (and ftcore.tracking stays the only MLflow caller).

Checkpoints go to a folder beside the output folder (ftcore/training/checkpoints.py), so a retried or re-run stage
with the same inputs resumes from the last complete one instead of step 0 (docs/training.md).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict

from ftcore.config import ContinualConfig, RewardConfig, TrainConfig
from ftcore.errors import UserError
from ftcore.fs import atomic_dir
from ftcore.hashing import hash_dir
from ftcore.models.load import load_tokenizer
from ftcore.models.peft_methods import export_model, load_trainable, read_method_spec, save_adapter
from ftcore.outputs import ModelOutput, TrainOutput
from ftcore.tensors import first_non_finite
from ftcore.training.analytics import layer_weight_norms, peak_memory_mb, reset_peak_memory
from ftcore.training.checkpoints import CheckpointStore, checkpoint_root
from ftcore.training.continual import anchor_to_start, diagonal_fisher, with_replay
from ftcore.training.distributed import check_distributed, run_workers, strategy_arguments
from ftcore.training.divergence import NonFinite, refuse_divergence
from ftcore.training.examples import read_split, training_dataset
from ftcore.training.plots import plot_layer_norms, plot_loss

log = logging.getLogger(__name__)

# Copied from the init stage's output, so the train stage's metrics say how much of the model was trained.
PARAMETER_METRICS = ("trainable_params", "total_params", "trainable_fraction")
OUTPUT_ARTIFACTS = {"loss_plot": "loss.png", "history": "history.json", "weight_norm_plot": "weight_norms.png",
                    "weight_norms": "weight_norms.json"}


@dataclass
class Objective:
    """What a task trains with beyond the rows: the balance stage's loss (classification), the starting weights
    (the reference of preference optimisation without an adapter), the rewards and their weights (rl)."""

    task: str = "sft"
    loss_fn: object = None
    reference_path: Path | None = None
    rewards: list = field(default_factory=list)
    reward_weights: list[float] = field(default_factory=list)


class TrainJob(BaseModel):
    """Everything one training process needs, as settings and files: the stage trains it in its own process or,
    with `train.distributed`, hands it to each process it launches (ftcore/training/distributed.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base: ModelOutput
    splits: dict[str, Path]
    cfg: TrainConfig
    out_dir: Path
    task: str = "sft"
    loss_spec: dict | None = None
    reward: RewardConfig | None = None
    reward_model_dir: Path | None = None
    continual: ContinualConfig | None = None
    retained_train: Path | None = None
    checkpoints: Path
    resume: Path | None = None  # the complete checkpoint to resume from
    resumed_from: int = 0  # its step


def train_model(base: ModelOutput, splits: dict[str, Path], cfg: TrainConfig, out_dir: Path, task: str = "sft",
                loss_spec: dict | None = None, callbacks: Sequence = (), reward: RewardConfig | None = None,
                reward_model_dir: Path | None = None, continual: ContinualConfig | None = None,
                retained_train: Path | None = None) -> TrainOutput:
    """Train the init stage's model on the train split for `task`; `loss_spec` is the balance stage's loss.json
    (class weights or focal loss, classification only); `reward` and the reward model's folder are task rl's;
    `continual` replays rows of `retained_train` and anchors the weights (docs/continual.md). `callbacks`
    (transformers TrainerCallbacks) join the trainer's own, e.g. to watch the steps from a benchmark; they need the
    trainer in this process, so not with `cfg.distributed`."""
    check_hardware(cfg)
    if callbacks and cfg.distributed.enabled:
        raise ValueError("callbacks watch a trainer in this process; train.distributed trains in others")
    store = CheckpointStore(checkpoint_root(out_dir), keep=cfg.save_total_limit)
    resume = store.latest_complete()
    store.prepare()
    if resume is not None:
        log.info("resuming training from %s (step %d)", resume.path, resume.step)
    job = TrainJob(base=base, splits=splits, cfg=cfg, out_dir=out_dir, task=task, loss_spec=loss_spec,
                   reward=reward, reward_model_dir=reward_model_dir, continual=continual,
                   retained_train=retained_train, checkpoints=store.root, resume=resume and resume.path,
                   resumed_from=resume.step if resume else 0)
    try:
        metrics = run_workers(job) if cfg.distributed.enabled else run_training(job, callbacks)
    except UserError:
        if not store.all():  # refused before the first checkpoint: nothing worth keeping for a retry
            store.remove()
        raise
    store.remove()  # the output is complete: nothing left to resume
    return TrainOutput(
        path=out_dir,
        content_hash=hash_dir(out_dir),
        model_path=out_dir / "model",
        adapter_path=out_dir / "adapter" if base.adapter_path else None,
        history_path=out_dir / "history.json",
        metrics=metrics,
        artifacts={name: out_dir / file for name, file in OUTPUT_ARTIFACTS.items()},
    )


def run_training(job: TrainJob, callbacks: Sequence = ()) -> dict[str, float] | None:
    """Train `job` in this process: alone, or as one of the processes of a distributed run, each on its shard of
    every global batch. The first process (the only one when alone) writes the output folder and returns the
    stage's metrics; the others return None."""
    cfg, task, base = job.cfg, job.task, job.base
    reset_peak_memory()
    model, tokenizer = load_for_training(base)
    train_frame, replayed = read_split(job.splits.get("train")), 0
    if job.continual is not None and train_frame is not None:
        train_frame, replayed = with_replay(train_frame, pd.read_parquet(job.retained_train), job.continual.replay,
                                            cfg.seed)
    train_rows, eval_rows = (training_dataset(frame, task, tokenizer, cfg.max_length, base.classes)
                             for frame in (train_frame, read_split(job.splits.get("validation"))))
    if task == "rl":
        eval_rows = None  # evaluating a policy means sampling answers: the evaluate stage does it once
    if train_rows is None:
        raise UserError("data: the train split is empty; add rows or lower data.split.validation/test")
    if cfg.early_stopping_patience is not None and eval_rows is None:
        raise UserError("train.early_stopping_patience: the dataset has no validation rows to evaluate; set "
                        "data.split.validation above 0 or remove early_stopping_patience")
    store = CheckpointStore(job.checkpoints, keep=cfg.save_total_limit)
    trainer, analytics = build_trainer(model, tokenizer, train_rows, eval_rows, cfg, store,
                                       objective(task, base, job.loss_spec, job.reward, job.reward_model_dir))
    if job.continual is not None and job.continual.regularizer is not None:
        anchor(trainer, tokenizer, job.continual, job.retained_train, cfg)
    for callback in callbacks:
        trainer.add_callback(callback)
    started = time.perf_counter()
    with refuse_divergence(cfg):  # a non-finite loss or weight stops training at the step it is found
        try:
            result = trainer.train(resume_from_checkpoint=str(job.resume) if job.resume else None)
        finally:
            end_progress_bars(trainer)
        runtime = time.perf_counter() - started
        eval_loss = _final_eval_loss(trainer, eval_rows)  # every process: evaluation gathers from all of them
        trained = whole_model(trainer, base)  # every process: gathering sharded weights is collective
        if not trainer.is_world_process_zero():
            return None
        # The last optimizer step comes after the last loss: only the weights show what it did.
        if (bad := first_non_finite(trained.named_parameters())) is not None:
            raise NonFinite(f"the trained weight {bad} is not finite", result.global_step)
    history = [entry for entry in trainer.state.log_history if "step" in entry]
    write_output(trained, tokenizer, base, history, job.out_dir)
    losses = [h["loss"] for h in history if "loss" in h] or [result.training_loss]
    # Mixture-of-experts models: the router's load-balancing loss, which TRL logs as aux_loss.
    router_loss = [h["aux_loss"] for h in history if "aux_loss" in h]
    # What this attempt did: a resumed attempt trained only the steps after its checkpoint.
    share = 1 - job.resumed_from / result.global_step
    return {
        **{name: base.metrics[name] for name in PARAMETER_METRICS},
        "train_loss": result.training_loss,
        "train_loss_first": losses[0],
        "train_loss_last": losses[-1],
        "steps": result.global_step,
        "runtime_s": runtime,
        "samples_per_s": len(train_rows) * cfg.epochs * share / runtime if cfg.max_steps is None else 0.0,
        "tokens_per_second": (trainer.state.num_input_tokens_seen - analytics.tokens_at_start) / runtime,
        "peak_memory_mb": peak_memory_mb(),  # of this process: each of a distributed run's holds its own
        "resumed_from_step": job.resumed_from,
        "processes": trainer.args.world_size,
        **({} if eval_loss is None else {"eval_loss": eval_loss}),
        **({"router_aux_loss_last": router_loss[-1]} if router_loss else {}),
        **alignment_metrics(history),
        **({} if job.continual is None else {"replayed_rows": replayed}),
    }


def end_progress_bars(trainer) -> None:
    """Close the progress bars that training left open: the Trainer closes them only when training ends normally,
    and the error line printed next would otherwise continue the half-drawn bar's line."""
    from transformers.trainer_callback import ProgressCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, ProgressCallback):
            for bar in ("training_bar", "prediction_bar"):
                if getattr(callback, bar, None) is not None:
                    getattr(callback, bar).close()
                    setattr(callback, bar, None)


def whole_model(trainer, base: ModelOutput):
    """The trained model with all of its weights. FSDP and DeepSpeed ZeRO-3 leave each process a shard of them:
    every process takes part in gathering them, and the first loads them into a fresh copy of the model, which
    saves, merges and measures as a one-process model does. (Run on GPUs only; none was at hand when this was
    written, see docs/scale-out.md.)"""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if not (trainer.is_fsdp_enabled or is_deepspeed_zero3_enabled()):
        return trainer.model
    weights = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    if not trainer.is_world_process_zero():
        return None
    model, _ = load_for_training(base)
    model.load_state_dict(weights)
    return model


def write_output(model, tokenizer, base: ModelOutput, history: list[dict], out_dir: Path) -> None:
    """The stage's output folder, written atomically: the trained model, the history and the plots."""
    adapter = base.adapter_path is not None
    norms = layer_weight_norms(model, base.base_path, adapter)
    with atomic_dir(out_dir) as tmp:
        save_trained(model, tokenizer, base, tmp)
        (tmp / "history.json").write_text(json.dumps(history, indent=1))
        (tmp / "weight_norms.json").write_text(json.dumps(norms, indent=1))
        plot_loss(history, tmp / "loss.png")
        title = "Trained adapter weight norm per layer" if adapter else "Weight change per layer (trained - base)"
        plot_layer_norms(norms, title, tmp / "weight_norms.png")


def check_hardware(cfg: TrainConfig) -> None:
    """Refuse, before any work, a precision this machine cannot train in (a GPU may be absent where the recipe
    was written)."""
    import torch

    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise UserError("train.mixed_precision: fp16 needs a CUDA GPU and this machine has none; use bf16 (runs on "
                        "CPU) or no")
    if cfg.mixed_precision == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise UserError("train.mixed_precision: bf16 is not supported by this GPU; use fp16 or no")
    check_distributed(cfg.distributed)


def anchor(trainer, tokenizer, continual: ContinualConfig, retained_train: Path, cfg: TrainConfig) -> None:
    """The continual regulariser on the trainer's loss; for ewc with the Fisher on the retained rows."""
    regularizer = continual.regularizer
    fisher = None
    if regularizer.method == "ewc":
        fisher = diagonal_fisher(trainer.model, tokenizer, pd.read_parquet(retained_train), regularizer,
                                 cfg.batch_size, cfg.seed)
    anchor_to_start(trainer, regularizer, fisher)


def objective(task: str, base: ModelOutput, loss_spec: dict | None, reward: RewardConfig | None,
              reward_model_dir: Path | None) -> Objective:
    if task == "classification":
        from ftcore.training.classification import loss_for  # imports transformers' Trainer: only when training

        return Objective(task, loss_fn=loss_for(loss_spec, base.classes))
    if task == "rl":
        from ftcore.alignment.trainers import reward_functions

        if reward is None:
            raise UserError("reward: task rl needs a reward model or reward functions")
        rewards, weights = reward_functions(reward, reward_model_dir)
        return Objective(task, rewards=rewards, reward_weights=weights)
    return Objective(task, reference_path=base.base_path)


# Per-step alignment metrics TRL logs (history keys) -> the train stage's summary metric of their last value.
ALIGNMENT_METRICS = {
    "rewards/accuracies": "reward_accuracy_last",  # dpo, kto, orpo: implicit reward of chosen above rejected
    "rewards/margins": "reward_margin_last",
    "eval_rewards/accuracies": "eval_reward_accuracy",
    "eval_rewards/margins": "eval_reward_margin",
    "accuracy": "reward_accuracy_last",  # reward_model: its score of chosen above rejected
    "margin": "reward_margin_last",
    "eval_accuracy": "eval_reward_accuracy",
    "eval_margin": "eval_reward_margin",
}


def alignment_metrics(history: list[dict]) -> dict[str, float]:
    """The last logged value of each alignment metric; for rl, the sampled answers' mean reward over the first and
    the last quarter of the steps (one logged value covers a few prompts only), and the share of prompts whose
    sampled answers all scored the same: their rewards minus the group's mean are zero, so GRPO and RLOO learn
    nothing from them (a policy that already answers every training prompt with certainty does not learn)."""
    metrics = {}
    for key, name in ALIGNMENT_METRICS.items():
        values = [h[key] for h in history if key in h]
        if values:
            metrics[name] = values[-1]
    rewards = [h["reward"] for h in history if "reward" in h]
    if rewards:
        quarter = max(1, len(rewards) // 4)
        metrics["mean_reward_first"] = sum(rewards[:quarter]) / quarter
        metrics["mean_reward_last"] = sum(rewards[-quarter:]) / quarter
    alike = [h["frac_reward_zero_std"] for h in history if "frac_reward_zero_std" in h]
    if alike:
        metrics["groups_scored_alike"] = sum(alike) / len(alike)
    return metrics


def load_for_training(base: ModelOutput):
    """The model to train (a 4-bit base for qlora) with the init stage's adapter, or the base for full FT."""
    tokenizer = load_tokenizer(base.base_path)
    model = load_trainable(base.base_path, base.adapter_path, read_method_spec(base.path), tokenizer,
                           classes=base.classes or None)
    return model, tokenizer


def build_trainer(model, tokenizer, train_rows, eval_rows, cfg: TrainConfig, store: CheckpointStore,
                  goal: Objective | None = None):
    """The trainer for the objective, writing checkpoints into `store`, and its analytics callback (for the
    session's tokens)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from ftcore.alignment import trainers as alignment
    from ftcore.training.callbacks import (
        CommitCheckpoints,
        EarlyStopping,
        ProgressBarOnly,
        StepAnalytics,
        StopAtNonFiniteLoss,
    )

    goal = goal or Objective()
    shared = trainer_arguments(model, cfg, store, eval_rows)
    match goal.task:
        case "classification":
            trainer = classification_trainer(model, tokenizer, train_rows, eval_rows, shared, goal.loss_fn)
        case "dpo":
            trainer = alignment.preference_trainer(model, tokenizer, train_rows, eval_rows, cfg, shared,
                                                   goal.reference_path)
        case "reward_model":
            trainer = alignment.reward_model_trainer(model, tokenizer, train_rows, eval_rows, cfg, shared)
        case "rl":
            trainer = alignment.rl_trainer(model, tokenizer, train_rows, cfg, shared, goal.rewards,
                                           goal.reward_weights)
        case _:
            trainer = language_model_trainer(model, tokenizer, train_rows, eval_rows, cfg, shared)
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    analytics = StepAnalytics()
    for callback in (ProgressBarOnly(), StopAtNonFiniteLoss(), CommitCheckpoints(store, cfg.save_steps), analytics):
        trainer.add_callback(callback)
    if cfg.early_stopping_patience is not None:
        trainer.add_callback(EarlyStopping(cfg.early_stopping_patience))
    return trainer, analytics


def language_model_trainer(model, tokenizer, train_rows, eval_rows, cfg: TrainConfig, shared: dict):
    """TRL's SFTTrainer: loss on completions (prompt_completion), on assistant turns (messages, whose mask comes with
    the rows) or on every token (dapt's text)."""
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        **shared,
        max_length=cfg.max_length,
        packing=cfg.packing,
        completion_only_loss=True,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_rows, eval_dataset=eval_rows,
                         processing_class=tokenizer)
    if cfg.packing and not uses_flash_attention(model):
        trainer.data_collator = packed_rows_collator(tokenizer)
    return trainer


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


def classification_trainer(model, tokenizer, train_rows, eval_rows, shared: dict, loss_fn):
    from transformers import DataCollatorWithPadding, TrainingArguments

    from ftcore.training.classification import ClassLossTrainer

    return ClassLossTrainer(model=model, args=TrainingArguments(**shared),
                            train_dataset=train_rows, eval_dataset=eval_rows, processing_class=tokenizer,
                            data_collator=DataCollatorWithPadding(tokenizer), loss_fn=loss_fn)


def trainer_arguments(model, cfg: TrainConfig, store: CheckpointStore, eval_rows) -> dict:
    """The TrainingArguments every objective shares."""
    periodic_eval = cfg.eval_steps is not None and eval_rows is not None
    return dict(
        output_dir=str(store.incoming),
        optim=optimizer_name(model),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # transformers 5 reads a float < 1 as a ratio of total steps
        weight_decay=cfg.weight_decay,
        seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        # By default the Trainer logs a NaN or infinite step's loss as the window's mean of the others, which hides a
        # diverged run (it reported train_loss_last=0): StopAtNonFiniteLoss must see it.
        logging_nan_inf_filter=False,
        eval_strategy="steps" if periodic_eval else "no",
        eval_steps=cfg.eval_steps if periodic_eval else None,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=None,  # the store keeps the newest cfg.save_total_limit complete checkpoints
        include_num_input_tokens_seen="non_padding",  # restored from checkpoints, unlike TRL's per-session count
        report_to="none",
        use_cpu=_cpu_only(),
        bf16=cfg.mixed_precision == "bf16",
        fp16=cfg.mixed_precision == "fp16",
        # transformers 5 names gradient checkpointing `activation_checkpointing` (the old name is a deprecated alias).
        activation_checkpointing=cfg.gradient_checkpointing,
        # Non-reentrant checkpointing needs no input that requires grad, which a frozen base under an adapter lacks.
        activation_checkpointing_kwargs={"use_reentrant": False},
        dataloader_num_workers=0,
        disable_tqdm=False,  # else transformers derives it from its log level and prints every log dict instead
        **strategy_arguments(cfg.distributed, model),
    )


def optimizer_name(model) -> str:
    """AdamW; for a 4-bit (qlora) base on a GPU, bitsandbytes' paged 8-bit AdamW as in the QLoRA paper: its states
    take a quarter of the memory and page to CPU memory instead of failing when the GPU runs short. Paged
    optimizers need CUDA, so on a CPU qlora trains with plain AdamW."""
    import torch

    if getattr(model, "is_loaded_in_4bit", False) and torch.cuda.is_available():
        return "paged_adamw_8bit"
    return "adamw_torch"


def _final_eval_loss(trainer, eval_rows) -> float | None:
    """The validation loss at the last step: logged already when evaluation is periodic (the Trainer evaluates at
    the last step too), else computed now."""
    if eval_rows is None:
        return None
    evals = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    if evals and evals[-1]["step"] == trainer.state.global_step:
        return evals[-1]["eval_loss"]
    return trainer.evaluate()["eval_loss"]


def save_trained(model, tokenizer, base: ModelOutput, out: Path) -> None:
    """`model/` is self-contained: merged into the fp32 base where the adapter merges, else the base with the
    adapter in `model/adapter/`; `adapter/` keeps the small adapter too."""
    if base.adapter_path is None:
        model.save_pretrained(out / "model", safe_serialization=True)
    else:
        save_adapter(model, out / "adapter")
        export_model(read_method_spec(base.path), base.base_path, out / "adapter", out / "model",
                     base.classes or None)
    tokenizer.save_pretrained(out / "model")


def _cpu_only() -> bool:
    import torch

    return not torch.cuda.is_available()
