import json

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from ftcore.alignment.rewards import reward_modules
from ftcore.config import EvaluateConfig, RewardConfig, TrainConfig
from ftcore.data.retained import RetainedData
from ftcore.evaluation.cross_validation import cross_validate
from ftcore.evaluation.domain import get_domain_metric
from ftcore.evaluation.evaluate import evaluate_models
from ftcore.evaluation.scores import metric_key
from ftcore.models.registered import ModelRef, model_folder
from ftcore.outputs import DatasetOutput, EvalOutput, ModelOutput, TrainOutput
from ftcore.paths import stage_dir
from tasks.common import source_hash, stage_inputs, stage_task


def plugin_hash(evaluate: EvaluateConfig, reward: RewardConfig | None) -> str:
    """The source of the domain metrics and reward functions the recipe uses (data engineers' code) joins the
    cache key."""
    return source_hash({get_domain_metric(name).module for name in evaluate.domain_metric_names}
                       | reward_modules(reward))


@stage_task("evaluate", plugin_code=lambda params: plugin_hash(params["evaluate"], params.get("reward")))
def evaluate(base: ModelOutput, trained: TrainOutput, dataset: DatasetOutput, evaluate: EvaluateConfig,
             task: str, title: str, train: TrainConfig, reward: RewardConfig | None = None,
             reward_model: ModelRef | None = None,
             forgetting_set: RetainedData | None = None, start: ModelRef | None = None,
             champion: ModelRef | None = None) -> EvalOutput:
    """Score the fine-tuned candidate on the test split beside the base model (and its few-shot prompting;
    classification: a TF-IDF baseline; reward_model: preferring the longer answer), the version it continued
    (`start`) and the current champion, all pinned when the run started; with a forgetting set, what it forgot;
    with evaluate.cross_validation, k folds trained (with `train`) and scored. The HTML report is linked from a
    Prefect artifact."""
    out_dir = stage_dir("evaluate", stage_inputs(base=base.content_hash, trained=trained.content_hash,
                                                 dataset=dataset.content_hash, evaluate=evaluate, task=task,
                                                 title=title, reward=reward, reward_model=reward_model,
                                                 train=train if evaluate.cross_validation else None,
                                                 forgetting_set=forgetting_set and forgetting_set.fingerprint,
                                                 start=start, champion=champion, plugins=plugin_hash(evaluate, reward)))
    models = {}
    # A classifier's or reward model's base, and a language model it started from, have no trained head to compare.
    if task not in ("classification", "reward_model"):
        models["base"] = base.base_path
        if start is not None:
            models["start"] = model_folder(start)
    if champion is not None:
        models["champion"] = model_folder(champion)
    models["candidate"] = trained.model_path
    folds = {}
    if evaluate.cross_validation:
        loss = dataset.artifacts.get("loss")
        loss_spec = json.loads(loss.read_text()) if loss else None
        folds = cross_validate(base, dataset.splits["train"], train, evaluate, task,
                               out_dir.with_name(f"{out_dir.name}-folds"), loss_spec)
    out = evaluate_models(models, dataset.splits, evaluate, out_dir, task, reward,
                          model_folder(reward_model) if reward_model else None,
                          forgetting_set.test if forgetting_set else None, champion.label if champion else None,
                          title, {"Training loss": trained.path / "loss.png"}, folds)
    logger = get_run_logger()
    rival = "champion" if champion else out.reference
    for metric in evaluate.metrics:
        logger.info("%s: %s %.4g -> fine-tuned %.4g", metric, rival, out.metrics[metric_key(rival, metric)],
                    out.metrics[metric])
    create_markdown_artifact(key="evaluation-report", markdown=report_link(out, evaluate, rival),
                             description=f"{title}: the evaluation report")
    return out


def report_link(out: EvalOutput, evaluate: EvaluateConfig, rival: str) -> str:
    """A markdown table of the candidate against the model it must beat, and the link to the HTML report."""
    lines = [f"[Evaluation report]({out.artifacts['report'].resolve().as_uri()}) "
             f"(also in MLflow under `stages/evaluate/report.html`)", "",
             f"| metric | {rival} | candidate | {evaluate.confidence:.0%} interval |", "|---|---|---|---|"]
    for metric in evaluate.metrics:
        low, high = out.metrics.get(f"{metric}.ci_low"), out.metrics.get(f"{metric}.ci_high")
        interval = f"[{low:.4g}, {high:.4g}]" if low is not None else ""
        lines.append(f"| {metric} | {out.metrics[metric_key(rival, metric)]:.4g} | {out.metrics[metric]:.4g} | "
                     f"{interval} |")
    return "\n".join(lines)
