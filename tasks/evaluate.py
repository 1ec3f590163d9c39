from prefect import get_run_logger

import ftcore.evaluation
from ftcore.config import EvaluateConfig
from ftcore.evaluation.evaluate import evaluate_models
from ftcore.outputs import DatasetOutput, EvalOutput, ModelOutput, TrainOutput
from ftcore.paths import stage_dir
from tasks.common import stage_inputs, stage_task


@stage_task("evaluate", code=[ftcore.evaluation])
def evaluate(base: ModelOutput, trained: TrainOutput, dataset: DatasetOutput, evaluate: EvaluateConfig) -> EvalOutput:
    """Score the base model and the fine-tuned candidate on the same test split."""
    out_dir = stage_dir("evaluate", stage_inputs(base=base.content_hash, trained=trained.content_hash,
                                                 dataset=dataset.content_hash, evaluate=evaluate))
    models = {"base": base.base_path, "candidate": trained.model_path}
    out = evaluate_models(models, dataset.splits["test"], evaluate, out_dir)
    logger = get_run_logger()
    for metric in evaluate.metrics:
        logger.info("%s: base %.4g -> fine-tuned %.4g", metric, out.metrics[f"base.{metric}"],
                    out.metrics[f"candidate.{metric}"])
    return out
