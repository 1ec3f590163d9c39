from prefect import get_run_logger

from ftcore.deploy.publish import DeployJob, deploy_stage
from ftcore.outputs import DeployOutput
from tasks.common import stage_folder, stage_task


@stage_task("deploy")
def deploy(job: DeployJob, mlflow_run_id: str, run_tags: dict[str, str]) -> DeployOutput:
    """Register a new version (alias challenger) of `job.registered_model` on the MLflow server at
    `job.tracking_uri`; move champion when the gate passes; export it (`deploy.exports`, the int8 one scored on the
    dataset's test split). The tracking URI is part of the key: pointing at another MLflow server registers anew.
    The run id and tags are not (PER_EXECUTION): a cached deploy registers nothing again."""
    # The folder holds what this run registered and exported (its version, `runs:/<run id>/exports/...`), which
    # another run's execution of the same job writes differently: one folder per run, so two runs at once never
    # replace each other's record under a result whose content hash no longer matches it.
    out = deploy_stage(job, stage_folder("deploy", job, run=mlflow_run_id), mlflow_run_id, run_tags)
    logger = get_run_logger()
    logger.info("registered %s version %s, aliases %s; gate %s: %s", out.registered_model, out.version,
                ", ".join(out.aliases), "passed" if out.gate_passed else "failed", out.gate_reason)
    if exports := job.deploy.exports:
        logger.info("exported %s", ", ".join(f"{kind} ({out.metrics[f'export.{kind}.mb']:.3g} MB)" for kind in exports))
    for kind in [k for k in job.deploy.exports if out.metrics.get(f"export.{k}.within_tolerance") == 0.0]:
        logger.warning("the %s export lost more than deploy.export_tolerance (%g) on the test split: see the "
                       "version's tag export.%s.check", kind, job.deploy.export_tolerance, kind)
    return out
