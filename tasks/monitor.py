"""The monitor: the pipeline's stage (the new version served and probed) and the scheduled flow's pass (the live
endpoint's request log over a window), with what a breach sets off: a Prefect event, and for the scheduled flow's pass
over the champion the retraining deployment when the recipe names one."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment
from prefect.events import emit_event
from prefect.exceptions import ObjectNotFound

from ftcore import tracking, versions
from ftcore.errors import UserError
from ftcore.models.registered import ModelRef
from ftcore.monitor.canaries import canaries_fingerprint
from ftcore.monitor.config import MonitorConfig, RetrainConfig
from ftcore.monitor.scheduled import MonitorPass, monitor_endpoint
from ftcore.monitor.stage import MonitorJob, monitor_stage
from ftcore.outputs import MonitorOutput
from ftcore.safety.config import ToxicityScreenConfig
from tasks.common import stage_folder, stage_task

BREACH_EVENT = "ftflow.monitor.breach"
# The breach event's resource labels that the retraining automation matches (infra/prefect.yaml): which monitor
# measured (`pipeline` or `schedule`), and whether the version is the champion when the breach is reported.
SOURCE_LABEL, CHAMPION_LABEL = "ftflow.monitor.source", "ftflow.model.champion"


def canaries_hash(job: MonitorJob) -> str:
    """The canaries' content (the file and its pictures) joins the cache key and the folder: edited canaries are
    asked again."""
    path = job.monitor.canaries
    return canaries_fingerprint(path) if path is not None else ""


@stage_task("monitor", plugin_code=lambda params: canaries_hash(params["job"]))
def monitor(job: MonitorJob, mlflow_run_id: str | None = None) -> MonitorOutput:
    """Serve the newly registered version, send it the test inputs and the canaries, and check that traffic against
    the objectives. A breach is announced as an event but starts no retraining: this version was trained on the
    latest data a moment ago, and retraining it at once would loop. The report is linked as MLflow's UI shows it in
    the pipeline's run `mlflow_run_id` (where the flow logs it)."""
    out = monitor_stage(job, stage_folder("monitor", job, canaries=canaries_hash(job)))
    deployed = job.deployed
    report = out.artifacts["report"]
    publish_report(out.artifacts["report_markdown"],
                   tracking.run_url(mlflow_run_id, tracking.stage_artifact("monitor", report)) if mlflow_run_id
                   else report.resolve().as_uri(), deployed.registered_model, deployed.version)
    log_outcome(out.metrics, out.breaches)
    if out.breaches:
        announce_breach(deployed.registered_model, deployed.version, out.breaches, out.metrics,
                        out.artifacts["report"], "pipeline")
    return out


@task(name="monitor-endpoint", cache_policy=NO_CACHE, persist_result=False)  # a pass is never reused
def check_endpoint(ref: ModelRef, cfg: MonitorConfig, toxicity: ToxicityScreenConfig | None,
                   prompt_template: str | None, endpoint: str | None, window: timedelta,
                   tags: dict[str, str]) -> MonitorPass:
    """The scheduled pass over the live endpoint's last `window`, reported to MLflow and as a Prefect artifact."""
    result = monitor_endpoint(ref, cfg, toxicity, prompt_template, endpoint, window, tags)
    a = result.assessment
    publish_report(result.files["report_markdown"], tracking.run_url(result.mlflow_run_id, result.files["report"].name),
                   a.model, a.version)
    log_outcome(a.metrics, a.breaches)
    return result


def publish_report(markdown: Path, report_url: str, name: str, version: str) -> None:
    """The report as a Prefect artifact, linking the full one (with charts) in MLflow's UI."""
    text = markdown.read_text(encoding="utf-8") + f"\n[Full report with charts]({report_url})\n"
    create_markdown_artifact(text, key=f"monitor-{artifact_key(name)}", description=f"{name} v{version}")


def log_outcome(metrics: dict[str, float], breaches: list[str]) -> None:
    shown = ", ".join(f"{k} {metrics[k]:.4g}" for k in ("latency_p95_s", "error_rate", "toxic_rate",
                                                          "canary_accuracy", "drift_score") if k in metrics)
    get_run_logger().info("%s; %s", shown or "nothing measured",
                          f"breached: {', '.join(breaches)}" if breaches else "no objective breached")


def announce_breach(name: str, version: str, breaches: list[str], metrics: dict[str, float], report: Path,
                    source: str) -> None:
    """The `ftflow.monitor.breach` event: an automation can act on it (page someone, start a deployment). Its
    resource says which monitor measured and whether the version is the champion, so that retraining follows only
    the scheduled pass over the champion: the pipeline's stage judges a version trained a moment ago (retraining it
    would loop), and a version that is not the champion (an experiment, a challenger) serves no production traffic."""
    emit_event(event=BREACH_EVENT,
               resource={"prefect.resource.id": f"ftflow.model.{name}", "prefect.resource.name": name,
                         "ftflow.model.version": version, SOURCE_LABEL: source,
                         CHAMPION_LABEL: str(is_champion(name, version)).lower()},
               payload={"breaches": breaches, "metrics": metrics, "report": str(report)})


def is_champion(name: str, version: str) -> bool:
    return versions.CHAMPION in versions.aliases_of(name, version)


def start_retraining(retrain: RetrainConfig) -> str:
    """A flow run of the retraining deployment with the recipe's parameters, not waited for; its id."""
    try:
        run = run_deployment(retrain.deployment, parameters=retrain.parameters, timeout=0)
    except ObjectNotFound:
        raise UserError(f"monitor.retrain.deployment: no deployment {retrain.deployment!r} on the Prefect server; "
                        "deploy the retraining flow under that name, or remove monitor.retrain") from None
    get_run_logger().info("started %s: flow run %s", retrain.deployment, run.id)
    return str(run.id)


def artifact_key(name: str) -> str:
    # Prefect artifact keys allow lowercase letters, digits and dashes only.
    return "".join(c if c.isalnum() else "-" for c in name.lower())
