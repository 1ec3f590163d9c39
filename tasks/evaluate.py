from prefect import get_run_logger

import ftcore.evaluation
from ftcore.config import EvaluateConfig, RewardConfig
from ftcore.data.retained import RetainedData
from ftcore.evaluation.evaluate import evaluate_models
from ftcore.models.registered import ModelRef, model_folder
from ftcore.outputs import DatasetOutput, EvalOutput, ModelOutput, TrainOutput
from ftcore.paths import stage_dir
from tasks.common import stage_inputs, stage_task


@stage_task("evaluate", code=[ftcore.evaluation])
def evaluate(base: ModelOutput, trained: TrainOutput, dataset: DatasetOutput, evaluate: EvaluateConfig,
             task: str, reward: RewardConfig | None = None, reward_model: ModelRef | None = None,
             retained: RetainedData | None = None, start: ModelRef | None = None,
             champion: ModelRef | None = None) -> EvalOutput:
    """Score the fine-tuned candidate on the test split beside the base model (classification: a TF-IDF baseline;
    reward_model: preferring the longer answer), the version it continued (`start`) and the current champion, all
    pinned when the run started; with retained data, its forgetting."""
    out_dir = stage_dir("evaluate", stage_inputs(base=base.content_hash, trained=trained.content_hash,
                                                 dataset=dataset.content_hash, evaluate=evaluate, task=task,
                                                 reward=reward, reward_model=reward_model,
                                                 retained=retained and retained.fingerprint, start=start,
                                                 champion=champion))
    models = {}
    # A classifier's or reward model's base, and a language model it started from, have no trained head to compare.
    if task not in ("classification", "reward_model"):
        models["base"] = base.base_path
        if start is not None:
            models["start"] = model_folder(start)
    if champion is not None:
        models["champion"] = model_folder(champion)
    models["candidate"] = trained.model_path
    out = evaluate_models(models, dataset.splits, evaluate, out_dir, task, reward,
                          model_folder(reward_model) if reward_model else None, retained.test if retained else None,
                          champion.label if champion else None)
    logger = get_run_logger()
    for metric in evaluate.metrics:
        logger.info("%s: %s %.4g -> fine-tuned %.4g", metric, out.reference, out.metrics[f"{out.reference}.{metric}"],
                    out.metrics[f"candidate.{metric}"])
    return out
