"""The train stage: one loop for every objective, with the trainer the objective table names
(ftcore/training/trainers.py: TRL's SFTTrainer for the language-model objectives, a Trainer with the balance stage's
loss for classification, TRL's alignment trainers for dpo, reward_model and rl).

Per-step metrics go to the pipeline's MLflow run as training makes them (callbacks.py: LiveMetrics, through
ftcore.tracking, the only MLflow caller) and to `history.json` in the output folder, from which the stage's end fills
in whatever live logging missed.

Checkpoints go to a folder beside the output folder (ftcore/training/checkpoints.py), so a retried or re-run stage
with the same inputs resumes from the last complete one instead of step 0 (docs/training.md).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ftcore.errors import UserError
from ftcore.fs import atomic_dir
from ftcore.hashing import hash_dir
from ftcore.models.config import FullMethod
from ftcore.models.load import reload_processing
from ftcore.models.peft_methods import export_model, load_trainable, read_method_spec, save_adapter
from ftcore.models.prompting import Prompting, write_prompting
from ftcore.models.registered import model_folder
from ftcore.models.vision import freeze_parts
from ftcore.outputs import ModelOutput, TrainOutput
from ftcore.tensors import first_non_finite
from ftcore.training.analytics import layer_weight_norms, peak_memory_mb, reset_peak_memory
from ftcore.training.checkpoints import CheckpointStore, checkpoint_root, restore_renamed_weights
from ftcore.training.config import ContinualConfig, TrainConfig
from ftcore.training.continual import anchor_to_start, diagonal_fisher, with_replay
from ftcore.training.distributed import check_distributed, run_workers, strategy_arguments
from ftcore.training.divergence import NonFinite, refuse_divergence
from ftcore.training.examples import read_split
from ftcore.training.jobs import TrainerSetup, TrainJob, TrainRun
from ftcore.training.merging import merged_adapter
from ftcore.training.plots import plot_layer_norms, plot_loss
from ftcore.training.trainers import TRAINERS

log = logging.getLogger(__name__)

# Copied from the init stage's output, so the train stage's metrics say how much of the model was trained.
PARAMETER_METRICS = ("trainable_params", "total_params", "trainable_fraction")
OUTPUT_ARTIFACTS = {"loss_plot": "loss.png", "history": "history.json", "weight_norm_plot": "weight_norms.png",
                    "weight_norms": "weight_norms.json"}


def train_stage(job: TrainJob, out_dir: Path, callbacks: Sequence = (),
                mlflow_run_id: str | None = None) -> TrainOutput:
    """Train the init stage's model on the train split with the objective's trainer, resuming from the last complete
    checkpoint of an earlier attempt. `callbacks` (transformers TrainerCallbacks) join the trainer's own, e.g. to
    watch the steps from a benchmark; they need the trainer in this process, so not with `train.distributed`. With
    `mlflow_run_id`, each log entry goes to that MLflow run as training makes it (callbacks.py: LiveMetrics)."""
    if job.merge is not None:
        return merge_stage(job, out_dir)
    cfg = job.train
    check_hardware(cfg)
    if callbacks and cfg.distributed.enabled:
        raise ValueError("callbacks watch a trainer in this process; train.distributed trains in others")
    store = CheckpointStore(checkpoint_root(out_dir), keep=cfg.save_total_limit)
    resume = store.latest_complete()
    store.prepare()
    if resume is not None:
        log.info("resuming training from %s (step %d)", resume.path, resume.step)
    run = TrainRun(job=job, out_dir=out_dir, checkpoints=store.root, resume=resume and resume.path,
                   resumed_from=resume.step if resume else 0,
                   reward_model_dir=model_folder(job.reward_model) if job.reward_model else None,
                   mlflow_run_id=mlflow_run_id)
    try:
        metrics = run_workers(run) if cfg.distributed.enabled else train_in_process(run, callbacks)
    except UserError:
        if not store.all():  # refused before the first checkpoint: nothing worth keeping for a retry
            store.remove()
        raise
    store.remove()  # the output is complete: nothing left to resume
    return trained_output(out_dir, job.base, metrics)


def merge_stage(job: TrainJob, out_dir: Path) -> TrainOutput:
    """A merge: recipe's adapter: the sources combined (ftcore/training/merging.py), written as training writes."""
    model, prompting, metrics = merged_adapter(job.merge, job.base)
    write_output(model, reload_processing(job.base.base_path), job.base, [], out_dir, prompting)
    return trained_output(out_dir, job.base, metrics)


def trained_output(out_dir: Path, base: ModelOutput, metrics: dict[str, float]) -> TrainOutput:
    return TrainOutput(
        path=out_dir,
        content_hash=hash_dir(out_dir),
        model_path=out_dir / "model",
        adapter_path=out_dir / "adapter" if base.adapter_path else None,
        history_path=out_dir / "history.json",
        metrics=metrics,
        artifacts={name: out_dir / file for name, file in OUTPUT_ARTIFACTS.items()},
    )


@dataclass
class Trained:
    """What one training session produced, in the first process."""

    model: object
    result: object  # transformers' TrainOutput: global_step, training_loss
    runtime_s: float
    eval_loss: float | None
    history: list[dict]


def train_in_process(run: TrainRun, callbacks: Sequence = ()) -> dict[str, float] | None:
    """Train `run` in this process: alone, or as one of the processes of a distributed run, each on its shard of
    every global batch. The first process (the only one when alone) writes the output folder and returns the
    stage's metrics; the others return None."""
    job, cfg = run.job, run.job.train
    reset_peak_memory()
    model, tokenizer = load_for_training(job)
    train_rows, eval_rows, replayed = training_rows(run, tokenizer)
    store = CheckpointStore(run.checkpoints, keep=cfg.save_total_limit)
    setup = TrainerSetup(model, tokenizer, train_rows, eval_rows, trainer_arguments(model, cfg, store, eval_rows), run)
    trainer, analytics = build_trainer(setup, store)
    if job.continual is not None and job.continual.regularizer is not None:
        anchor(trainer, tokenizer, job.continual, job.retained.train, cfg)
    for callback in callbacks:
        trainer.add_callback(callback)
    trained = train_session(trainer, run, eval_rows)
    if trained is None:
        return None
    write_output(trained.model, tokenizer, job.base, trained.history, run.out_dir, job.prompting)
    tokens = trainer.state.num_input_tokens_seen - analytics.tokens_at_start
    return {**stage_metrics(run, trained, len(train_rows), tokens), "processes": trainer.args.world_size,
            **({} if job.continual is None else {"replayed_rows": replayed})}


def training_rows(run: TrainRun, tokenizer) -> tuple[object, object | None, int]:
    """The train and validation rows in the form the objective's trainer takes, and how many retained rows were
    replayed into the train split."""
    job, cfg = run.job, run.job.train
    examples = TRAINERS[job.objective.trainer].examples
    train_frame, replayed = read_split(job.dataset.splits.get("train")), 0
    if train_frame is None:
        raise UserError("data: the train split is empty; add rows or lower data.split.validation/test")
    if job.continual is not None:
        train_frame, replayed = with_replay(train_frame, pd.read_parquet(job.retained.train), job.continual.replay,
                                            cfg.seed)
    eval_frame = read_split(job.dataset.splits.get("validation")) if not job.objective.samples_answers else None
    train_rows = examples(train_frame, tokenizer, cfg.max_length, job.base.classes)
    eval_rows = None if eval_frame is None else examples(eval_frame, tokenizer, cfg.max_length, job.base.classes)
    if cfg.early_stopping_patience is not None and eval_rows is None:
        raise UserError("train.early_stopping_patience: the dataset has no validation rows to evaluate; set "
                        "data.split.validation above 0 or remove early_stopping_patience")
    return train_rows, eval_rows, replayed


def train_session(trainer, run: TrainRun, eval_rows) -> Trained | None:
    """Train from the checkpoint to resume (if any) and gather the trained model; None in every process but the
    first."""
    started = time.perf_counter()
    with refuse_divergence(run.job.train):  # a non-finite loss or weight stops training at the step it is found
        try:
            result = trainer.train(resume_from_checkpoint=str(run.resume) if run.resume else None)
        finally:
            end_progress_bars(trainer)
        runtime = time.perf_counter() - started
        eval_loss = _final_eval_loss(trainer, eval_rows)  # every process: evaluation gathers from all of them
        model = whole_model(trainer, run.job)  # every process: gathering sharded weights is collective
        if not trainer.is_world_process_zero():
            return None
        # The last optimizer step comes after the last loss: only the weights show what it did.
        if (bad := first_non_finite(model.named_parameters())) is not None:
            raise NonFinite(f"the trained weight {bad} is not finite", result.global_step)
    history = [entry for entry in trainer.state.log_history if "step" in entry]
    return Trained(model, result, runtime, eval_loss, history)


def stage_metrics(run: TrainRun, trained: Trained, train_rows: int, tokens: int) -> dict[str, float]:
    cfg, result, history, runtime = run.job.train, trained.result, trained.history, trained.runtime_s
    losses = [h["loss"] for h in history if "loss" in h] or [result.training_loss]
    # Mixture-of-experts models: the router's load-balancing loss, which TRL logs as aux_loss.
    router_loss = [h["aux_loss"] for h in history if "aux_loss" in h]
    # What this attempt did: a resumed attempt trained only the steps after its checkpoint.
    share = 1 - run.resumed_from / result.global_step
    return {
        **{name: run.job.base.metrics[name] for name in PARAMETER_METRICS},
        "train_loss": result.training_loss,
        "train_loss_first": losses[0],
        "train_loss_last": losses[-1],
        "steps": result.global_step,
        "runtime_s": runtime,
        "samples_per_s": train_rows * cfg.epochs * share / runtime if cfg.max_steps is None else 0.0,
        "tokens_per_second": tokens / runtime,
        "peak_memory_mb": peak_memory_mb(),  # of this process: each of a distributed run's holds its own
        "resumed_from_step": run.resumed_from,
        **({} if trained.eval_loss is None else {"eval_loss": trained.eval_loss}),
        **({"router_aux_loss_last": router_loss[-1]} if router_loss else {}),
        **alignment_metrics(history),
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


def whole_model(trainer, job: TrainJob):
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
    model, _ = load_for_training(job)
    model.load_state_dict(weights)
    return model


def write_output(model, tokenizer, base: ModelOutput, history: list[dict], out_dir: Path,
                 prompting: Prompting | None) -> None:
    """The stage's output folder, written atomically: the trained model (with how it was prompted), the history
    and the plots."""
    adapter = base.adapter_path is not None
    norms = layer_weight_norms(model, base.base_path, adapter)
    with atomic_dir(out_dir) as tmp:
        save_trained(model, tokenizer, base, tmp)
        if prompting is not None:
            write_prompting(tmp / "model", prompting)
        (tmp / "history.json").write_text(json.dumps(history, indent=1))
        (tmp / "weight_norms.json").write_text(json.dumps(norms, indent=1))
        plot_loss(history, tmp / "loss.png")
        title = "Trained adapter weight norm per layer" if adapter else "Weight change per layer (trained - base)"
        plot_layer_norms(norms, title, tmp / "weight_norms.png")


def check_hardware(cfg: TrainConfig) -> None:
    """Refuse, before any work, a precision this machine cannot train in (a GPU may be absent where the recipe
    was written)."""
    if cfg.mixed_precision != "no":  # torch takes seconds to import: `ftflow validate` asks it only when it must
        import torch

        if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
            raise UserError("train.mixed_precision: fp16 needs a CUDA GPU and this machine has none; use bf16 (runs "
                            "on CPU) or no")
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


def load_for_training(job: TrainJob):
    """The model to train (a 4-bit base for qlora) with the init stage's adapter, or the base for full FT (a
    vision-language model's frozen parts frozen), and its tokenizer (a vision-language model's processor)."""
    base = job.base
    processing = reload_processing(base.base_path)
    method = read_method_spec(base.path)
    model = load_trainable(base.base_path, base.adapter_path, method, getattr(processing, "tokenizer", processing),
                           classes=base.classes or None)
    if job.objective.sees_images and isinstance(method, FullMethod):
        freeze_parts(model, job.train.vision)
    return model, processing


def build_trainer(setup: TrainerSetup, store: CheckpointStore):
    """The objective's trainer, writing checkpoints into `store`, and its analytics callback (for the session's
    tokens)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from ftcore.progress import on_terminal
    from ftcore.training.callbacks import (
        CommitCheckpoints,
        EarlyStopping,
        LiveMetrics,
        ProgressBarOnly,
        ProgressLog,
        StepAnalytics,
        StopAtNonFiniteLoss,
    )

    cfg = setup.cfg
    trainer = TRAINERS[setup.run.job.objective.trainer].build(setup)
    restore_renamed_weights(trainer)
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    analytics = StepAnalytics()
    # In this order: StepAnalytics completes each log entry (tokens per second) before the others read it.
    for callback in (StopAtNonFiniteLoss(), CommitCheckpoints(store, cfg.save_steps), analytics, ProgressLog(),
                     *([ProgressBarOnly()] if on_terminal() else []),  # a bar on a terminal only, not in a log file
                     *([LiveMetrics(setup.run.mlflow_run_id)] if setup.run.mlflow_run_id else [])):
        trainer.add_callback(callback)
    if cfg.early_stopping_patience is not None:
        trainer.add_callback(EarlyStopping(cfg.early_stopping_patience))
    return trainer, analytics


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
