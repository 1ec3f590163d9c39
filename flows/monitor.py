"""The `monitor` flow: a served model's last window of traffic against its recipe's objectives, on a schedule.

Each run reads the endpoint's request log, asks the canaries, compares live inputs with the training data, writes
the report (MLflow run in `<model>-monitor`, Prefect artifact) and, on a breach, emits `ftflow.monitor.breach` and,
when the version is the champion, starts `monitor.retrain.deployment` if the recipe names one. `schedule` makes it a
deployment on a cron (docs/monitoring.md).
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from prefect.runtime import flow_run
from pydantic import Field

from ftcore.errors import UserError
from ftcore.models.config import MODEL_URI
from ftcore.models.registered import pin_reference
from ftcore.monitor.canaries import question_template
from ftcore.monitor.config import parse_window
from ftcore.quiet import quiet_libraries
from ftcore.recipe import load_recipe
from tasks.monitor import announce_breach, check_endpoint, is_champion, start_retraining

# JSON-schema patterns (the UI checks them in the browser: no Python-only syntax such as named groups).
MODEL_PATTERN = r"^models:/[^/@]+(@[A-Za-z0-9_-]+|/\d+)$"
WINDOW_PATTERN = r"^\d+(\.\d+)?[smhd]$"


@flow(name="monitor", log_prints=False)
def monitor(
    model: Annotated[str, Field(pattern=MODEL_PATTERN)] = "models:/clinical-qa@champion",
    recipe: str = "data_recipes/recipes/clinical_qa.yaml",
    endpoint: Annotated[str | None, Field(pattern=r"^https?://")] = None,
    window: Annotated[str | None, Field(pattern=WINDOW_PATTERN)] = None,
) -> dict:
    """Check a served model's last window of traffic against its recipe's objectives.

    Args:
        model: the registered model to watch: models:/NAME@ALIAS (the version the alias points at now) or
            models:/NAME/VERSION.
        recipe: the recipe whose monitor section (objectives, canaries, retrain) and evaluate.safety.toxicity apply.
        endpoint: the endpoint's base URL the canaries are sent to; default: the recipe's monitor.endpoint.
        window: how far back to look, e.g. 30m, 1h, 1d; default: the recipe's monitor.window.
    """
    quiet_libraries()  # a worker's flow-run process starts afresh
    parsed = load_recipe(recipe)
    cfg = parsed.monitor
    ref = pin_reference(model, "model")
    tags = {"ftflow.prefect_flow_run_id": str(flow_run.get_id()), "ftflow.recipe_path": recipe}
    result = check_endpoint(ref, cfg, parsed.evaluate.safety.toxicity, question_template(parsed.data),
                            endpoint or cfg.endpoint, parse_window(window) if window else cfg.window, tags)
    a = result.assessment
    retrain_run = None
    if a.breaches:
        announce_breach(a.model, a.version, a.breaches, a.metrics, result.files["report"], "schedule")
        if cfg.retrain is not None and is_champion(a.model, a.version):  # only production's breaches retrain
            retrain_run = start_retraining(cfg.retrain)
    return {"model": a.model, "version": a.version, "metrics": a.metrics, "breaches": a.breaches,
            "not_measured": a.not_measured, "report": str(result.files["report"]),
            "mlflow_run_id": result.mlflow_run_id, "retrain_flow_run_id": retrain_run}


def schedule(model: str, recipe: str, endpoint: str | None, cron: str, name: str | None = None):
    """The flow as a deployment run on `cron` with these parameters: `.apply()` registers it with the Prefect
    server, `prefect.serve(...)` runs its schedule (no work pool needed)."""
    match = MODEL_URI.match(model)
    if match is None:
        raise UserError(f"model: {model!r} is not models:/NAME@ALIAS or models:/NAME/VERSION")
    parameters = {"model": model, "recipe": recipe, **({"endpoint": endpoint} if endpoint else {})}
    return monitor.to_deployment(name=name or match["name"], cron=cron, parameters=parameters)
