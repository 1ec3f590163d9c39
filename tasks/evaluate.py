"""evaluate task: score the candidate against its references and write the report."""

from __future__ import annotations

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from ftcore import tracking
from ftcore.evaluation.config import EvaluateConfig
from ftcore.evaluation.domain import METRICS
from ftcore.evaluation.evaluate import evaluate_stage
from ftcore.evaluation.intervals import metric_key
from ftcore.evaluation.jobs import EvaluateJob
from ftcore.outputs import EvalOutput
from ftcore.safety.toxicity import TOXICITY_SCORERS
from tasks.common import source_hash, stage_folder, stage_task


def plugin_hash(job: EvaluateJob) -> str:
    """The source of the plugins the recipe picks by name (data engineers' code, which no import of the stage's
    reaches): its domain metrics, reward functions and toxicity scorer. It joins the cache key and the folder."""
    toxicity = job.evaluate.safety.toxicity
    return source_hash(METRICS.modules(job.evaluate.domain_metric_names)
                       | (job.reward.function_modules() if job.reward else set())
                       | (TOXICITY_SCORERS.modules([toxicity.scorer]) if toxicity else set()))


@stage_task("evaluate", plugin_code=lambda params: plugin_hash(params["job"]))
def evaluate(job: EvaluateJob, mlflow_run_id: str | None = None) -> EvalOutput:
    """Score the fine-tuned candidate on the test split beside the base model (and its few-shot prompting; a
    classifier: a TF-IDF baseline; a reward model: preferring the longer answer), the version it continued and the
    current champion, all pinned when the run started; with a forgetting set, what it forgot; with
    evaluate.cross_validation, k folds trained and scored. The HTML report is linked from a Prefect artifact, as
    MLflow's UI shows it in the pipeline's run `mlflow_run_id` (where the flow logs it)."""
    out = evaluate_stage(job, stage_folder("evaluate", job, plugins=plugin_hash(job)))
    evaluate, title = job.evaluate, job.title
    logger = get_run_logger()
    rival = "champion" if job.champion else out.reference
    for metric in evaluate.metrics:
        logger.info("%s: %s %.4g -> fine-tuned %.4g", metric, rival, out.metrics[metric_key(rival, metric)],
                    out.metrics[metric])
    create_markdown_artifact(key="evaluation-report", markdown=report_link(out, evaluate, rival, mlflow_run_id),
                             description=f"{title}: the evaluation report")
    return out


def report_link(out: EvalOutput, evaluate: EvaluateConfig, rival: str, mlflow_run_id: str | None) -> str:
    """A markdown table of the candidate against the model it must beat, and the link to the HTML report in MLflow's
    UI (the worker's own path outside a pipeline run)."""
    report = tracking.stage_artifact("evaluate", out.artifacts["report"])
    url = tracking.run_url(mlflow_run_id, report) if mlflow_run_id else out.artifacts["report"].resolve().as_uri()
    lines = [f"[Evaluation report]({url}) (in MLflow: `{report}`)", "",
             f"| metric | {rival} | candidate | {evaluate.confidence:.0%} interval |", "|---|---|---|---|"]
    for metric in evaluate.metrics:
        low, high = out.metrics.get(f"{metric}.ci_low"), out.metrics.get(f"{metric}.ci_high")
        interval = f"[{low:.4g}, {high:.4g}]" if low is not None else ""
        lines.append(f"| {metric} | {out.metrics[metric_key(rival, metric)]:.4g} | {out.metrics[metric]:.4g} | "
                     f"{interval} |")
    return "\n".join(lines)
