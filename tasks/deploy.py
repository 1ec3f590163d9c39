from prefect import get_run_logger

from ftcore.config import GateRule
from ftcore.deploy.publish import publish
from ftcore.evaluate_config import ExportKind
from ftcore.outputs import DatasetOutput, DeployOutput, EvalOutput, TrainOutput
from ftcore.paths import stage_dir
from tasks.common import stage_inputs, stage_task


@stage_task("deploy")
def deploy(
    trained: TrainOutput,
    evaluation: EvalOutput,
    gate: list[GateRule],
    registered_model: str,
    registry: str,
    mlflow_run_id: str,
    run_tags: dict[str, str],
    dataset: DatasetOutput | None = None,
    exports: list[ExportKind] | None = None,
    int8_tolerance: float = 0.05,
) -> DeployOutput:
    """Register a new version (alias challenger); move champion when the gate passes; export it (`exports`, the
    int8 one scored on the dataset's test split).

    `registry` (the tracking URI) is part of the cache key: pointing at another MLflow server registers anew."""
    exports = exports or []
    out_dir = stage_dir("deploy", stage_inputs(trained=trained.content_hash, evaluation=evaluation.content_hash,
                                               gate=gate, registered_model=registered_model, run=mlflow_run_id,
                                               dataset=dataset.content_hash if dataset else None, exports=exports,
                                               int8_tolerance=int8_tolerance))
    test_split = dataset.splits.get("test") if dataset else None
    out = publish(trained, evaluation, gate, registered_model, mlflow_run_id, run_tags, out_dir, exports,
                  int8_tolerance, test_split)
    logger = get_run_logger()
    logger.info("registered %s version %s, aliases %s; gate %s: %s", registered_model, out.version,
                ", ".join(out.aliases), "passed" if out.gate_passed else "failed", out.gate_reason)
    if exports:
        logger.info("exported %s", ", ".join(f"{kind} ({out.metrics[f'export.{kind}.mb']:.3g} MB)" for kind in exports))
    if out.metrics.get("export.int8.within_tolerance") == 0.0:
        logger.warning("the int8 export lost more than deploy.int8_tolerance (%g) on the test split: see the "
                       "version's tag export.int8.check", int8_tolerance)
    return out
