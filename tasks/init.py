"""init task: the base model and tokenizer, wrapped with the fine-tuning method."""

from __future__ import annotations

from prefect import get_run_logger

from ftcore.models.init import InitJob, init_stage
from ftcore.outputs import ModelOutput
from tasks.common import stage_folder, stage_task


@stage_task("init")
def init(job: InitJob) -> ModelOutput:
    """Build or load the base model and tokenizer (with the head the objective needs; for source champion the pinned
    version) and wrap it with the fine-tuning method."""
    out = init_stage(job, stage_folder("init", job))
    m = out.metrics
    if job.start is not None:
        get_run_logger().info("starting from registered version %s", job.start.label)
    get_run_logger().info("%s base, method %s: %d of %d parameters trainable (%.2f%%)", job.model.source,
                          job.method.name, m["trainable_params"], m["total_params"], 100 * m["trainable_fraction"])
    return out
