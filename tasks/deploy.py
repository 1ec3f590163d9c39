from prefect import get_run_logger

import ftcore.deploy
import ftcore.tracking
from ftcore.config import GateRule
from ftcore.deploy.publish import publish
from ftcore.outputs import DeployOutput, EvalOutput, TrainOutput
from ftcore.paths import stage_dir
from tasks.common import stage_inputs, stage_task


@stage_task("deploy", code=[ftcore.deploy, ftcore.tracking])
def deploy(
    trained: TrainOutput,
    evaluation: EvalOutput,
    gate: list[GateRule],
    registered_model: str,
    registry: str,
    mlflow_run_id: str,
    run_tags: dict[str, str],
) -> DeployOutput:
    """Register a new version (alias challenger); move champion when the gate passes.

    `registry` (the tracking URI) is part of the cache key: pointing at another MLflow server registers anew."""
    out_dir = stage_dir("deploy", stage_inputs(trained=trained.content_hash, evaluation=evaluation.content_hash,
                                               gate=gate, registered_model=registered_model, run=mlflow_run_id))
    out = publish(trained, evaluation, gate, registered_model, mlflow_run_id, run_tags, out_dir)
    get_run_logger().info("registered %s version %s, aliases %s; gate %s: %s", registered_model, out.version,
                          ", ".join(out.aliases), "passed" if out.gate_passed else "failed", out.gate_reason)
    return out
