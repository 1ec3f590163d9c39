from prefect import get_run_logger

from ftcore.config import MethodConfig, ModelConfig
from ftcore.models.init import init_model
from ftcore.models.registered import ModelRef
from ftcore.outputs import DatasetOutput, ModelOutput
from ftcore.paths import stage_dir
from tasks.common import stage_inputs, stage_task


@stage_task("init")
def init(model: ModelConfig, method: MethodConfig, dataset: DatasetOutput, task: str,
         start: ModelRef | None = None) -> ModelOutput:
    """Build or load the base model and tokenizer (with a classification head for task classification, a reward
    head for task reward_model; for source champion the pinned version `start`) and wrap it with the fine-tuning
    method."""
    out_dir = stage_dir("init", stage_inputs(model=model, method=method, dataset=dataset.content_hash, task=task,
                                             start=start))
    out = init_model(model, method, dataset, out_dir, task, start)
    m = out.metrics
    if start is not None:
        get_run_logger().info("starting from registered version %s", start.label)
    get_run_logger().info("%s base, method %s: %d of %d parameters trainable (%.2f%%)", model.source, method.name,
                          m["trainable_params"], m["total_params"], 100 * m["trainable_fraction"])
    return out
