"""The module that talks to MLflow (with ftcore/versions.py for the model registry, through this client).

Embedded default: `sqlite:///$FTFLOW_HOME/mlflow.db` with artifacts in `$FTFLOW_HOME/mlartifacts`; setting
MLFLOW_TRACKING_URI switches to a real server. All calls go through MlflowClient with explicit run ids, because
Prefect runs tasks in worker threads and MLflow's fluent "active run" is thread-local.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

from ftcore.locks import file_lock
from ftcore.paths import home

log = logging.getLogger(__name__)

def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home() / 'mlflow.db'}"


def artifact_root() -> str:
    return (home() / "mlartifacts").as_uri()


# Where a user opens MLflow's UI, for the links ftflow prints and hands to Prefect: FTFLOW_MLFLOW_UI_URL, else the
# tracking server itself (http(s)), else where `ftflow ui` serves the embedded store.
UI_URL_VARIABLE = "FTFLOW_MLFLOW_UI_URL"
DEFAULT_UI_URL = "http://127.0.0.1:5000"
# MLflow 3.17's UI shows an experiment's GenAI pages (traces) unless the URL says otherwise: its GenAI / model
# training switch follows this query over the browser's last choice; the experiment's kind tag alone does not move it.
UI_VIEW = "workflowType=machine_learning"
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "finetuning"


def ui_url() -> str:
    configured = os.environ.get(UI_URL_VARIABLE) or tracking_uri()
    return (configured if configured.startswith(("http://", "https://")) else DEFAULT_UI_URL).rstrip("/")


def run_url(run_id: str, artifact: str | None = None) -> str:
    """The run's page in MLflow's UI; with `artifact` (a path in the run), that artifact shown there."""
    from urllib.parse import quote

    page = f"{ui_url()}/#/experiments/{client().get_run(run_id).info.experiment_id}/runs/{run_id}"
    return f"{page}{f'/artifacts/{quote(artifact)}' if artifact else ''}?{UI_VIEW}"


def artifact_file_url(run_id: str, artifact: str) -> str:
    """The artifact file itself as MLflow's UI server serves it (an image to show in another page)."""
    from urllib.parse import quote

    return f"{ui_url()}/get-artifact?path={quote(artifact)}&run_uuid={run_id}"


def version_url(name: str, version: str) -> str:
    from urllib.parse import quote

    return f"{ui_url()}/#/models/{quote(name, safe='')}/versions/{version}?{UI_VIEW}"


def client():
    """A client of this FTFLOW_HOME's store (or MLFLOW_TRACKING_URI's server). MLflow's global set_tracking_uri is
    not used: it writes MLFLOW_TRACKING_URI into the environment, which would then outrank a later FTFLOW_HOME."""
    from mlflow import MlflowClient

    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        _set_up_sqlite_store(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@functools.cache
def _set_up_sqlite_store(uri: str) -> None:
    """Create (or migrate) the SQLite store's schema under a lock beside the database, once per process: MLflow
    creates it when a store is first opened, and two processes doing so at once on a new database make one crash
    (`duplicate column name`, `table _alembic_tmp_params already exists`)."""
    from mlflow import MlflowClient

    database = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
    with file_lock(database.with_name(f".{database.name}.lock")):
        c = MlflowClient(tracking_uri=uri, registry_uri=uri)
        c.search_experiments(max_results=1)  # opens the tracking store: creates its tables
        c.search_registered_models(max_results=1)  # and the registry's


# --- runs ------------------------------------------------------------------------------------------------------


def start_pipeline_run(experiment: str, run_name: str, recipe: dict, tags: dict[str, str]) -> str:
    """Create the MLflow run of one pipeline execution, with the resolved recipe as artifact and flat params."""
    c = client()
    run = c.create_run(_experiment_id(c, experiment), run_name=run_name, tags=tags)
    run_id = run.info.run_id
    from mlflow.entities import Param

    params = [Param(k, str(v)[:6000]) for k, v in flatten(recipe).items()]
    for i in range(0, len(params), 100):  # MLflow accepts at most 100 params per batch
        c.log_batch(run_id, params=params[i : i + 100])
    c.log_text(run_id, _yaml(recipe), "recipe.yaml")
    return run_id


def _experiment_id(c, name: str) -> str:
    """The experiment's id, created when missing; another process creating it at the same moment (two first runs
    of a recipe) is no error."""
    from mlflow.exceptions import MlflowException

    found = c.get_experiment_by_name(name)
    if found is not None:
        if EXPERIMENT_KIND_TAG not in found.tags:  # made before ftflow set it
            c.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return found.experiment_id
    try:
        return c.create_experiment(name, artifact_location=_artifact_location(),
                                   tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except MlflowException:
        found = c.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def _artifact_location() -> str | None:
    # Only the embedded store needs one; a tracking server decides its own artifact store.
    return artifact_root() if tracking_uri().startswith("sqlite:") else None


def end_pipeline_run(run_id: str, succeeded: bool) -> None:
    client().set_terminated(run_id, status="FINISHED" if succeeded else "FAILED")


def add_to_run_name(run_id: str, suffix: str) -> None:
    c = client()
    c.update_run(run_id, name=f"{c.get_run(run_id).info.run_name}{suffix}")


def running_runs(experiment: str) -> list[dict[str, Any]]:
    """`{run_id, tags}` of the experiment's runs that MLflow still shows as RUNNING."""
    c = client()
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = c.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000)
    return [{"run_id": r.info.run_id, "tags": dict(r.data.tags)} for r in runs]


def tagged_run(experiment: str, tags: dict[str, str]) -> str | None:
    """The id of the experiment's newest run carrying every tag in `tags`, or None."""
    c = client()
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return None
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = c.search_runs([exp.experiment_id], filter_string=query, max_results=1,
                         order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None


def reopen_run(run_id: str, tags: dict[str, str]) -> None:
    """Set an ended run RUNNING again, with `tags` (a resumed search goes on in its study's run)."""
    c = client()
    c.update_run(run_id, status="RUNNING")
    set_run_tags(run_id, tags)


def log_study(run_id: str, metrics: dict[str, float], trial_values: list[tuple[str, float, int]],
              plots: Path) -> None:
    """A search's results in its study run: `study/<name>` metrics (counts, the best values), each finished trial's
    objective values as `study/trials/<metric>` at the trial's number as step (MLflow's chart of them is the
    optimisation history), and the plots in `plots` under `study/`."""
    _log_metrics(run_id, [(f"study/{name}", value, 0) for name, value in metrics.items()]
                 + [(f"study/trials/{name}", value, number) for name, value, number in trial_values])
    client().log_artifacts(run_id, str(plots), "study")


def mark_killed(run_id: str, reason: str) -> None:
    """End a run whose process died: status KILLED, and the reason as its `ftflow.ended` tag."""
    c = client()
    c.set_tag(run_id, "ftflow.ended", reason)
    c.set_terminated(run_id, status="KILLED")


def log_stage(run_id: str, stage: str, metrics: dict[str, float], artifacts: dict[str, Path], cached: bool) -> None:
    """Log one stage's metrics (`<stage>/<name>`: metric_key) and artifacts (under `stages/<stage>/`)."""
    log_stage_status(run_id, stage, metrics, "cached" if cached else "completed")
    c = client()
    for path in artifacts.values():
        if Path(path).exists():
            c.log_artifact(run_id, str(path), artifact_path=str(Path(stage_artifact(stage, path)).parent))


def log_stage_status(run_id: str, stage: str, metrics: dict[str, float], status: str) -> None:
    """A stage's metrics and its status tag `ftflow.stage.<stage>` (completed, cached; pruned: a search's trial)."""
    _log_metrics(run_id, [(metric_key(k, stage), v, 0) for k, v in metrics.items()])
    client().set_tag(run_id, f"ftflow.stage.{stage}", status)


def stage_artifact(stage: str, path: Path | str) -> str:
    """Where log_stage puts a stage's artifact file in the run."""
    return f"stages/{stage}/{Path(path).name}"


# Metric names as MLflow's UI groups them. Its charts view makes a section of each name's part before the first '/',
# sorts sections in plain character order (digits, uppercase, '_', lowercase) and the charts in one alphabetically;
# its runs table and search show the whole name. So the per-step training loss gets a numbered section of its own,
# which comes first, the other per-step metrics the second, and each stage's summary one named after the stage:
# `1 loss/train`, `1 loss/validation`, `2 training/learning_rate`, ..., `evaluate/exact_match`, `train/train_loss`.
LOSS_SECTION, STEPS_SECTION = "1 loss", "2 training"
LOSSES = {"loss": "train", "eval_loss": "validation"}  # the Trainer's history keys of the two losses


def metric_key(name: str, stage: str | None = None) -> str:
    """The MLflow name of a stage's summary metric `name` (with `stage`) or of the training history's key `name`
    (logged at each step; without)."""
    if stage is not None:
        return f"{stage}/{name}"
    return f"{LOSS_SECTION}/{LOSSES[name]}" if name in LOSSES else f"{STEPS_SECTION}/{name}"


def _per_step(key: str) -> bool:
    return key.startswith((f"{LOSS_SECTION}/", f"{STEPS_SECTION}/"))


def training_points(entries: list[dict]) -> list[tuple[str, Any, int]]:
    """Training log entries (history.json's, or one as the Trainer makes it) as (metric_key, value, step)."""
    return [(metric_key(k), v, int(entry["step"]))
            for entry in entries for k, v in entry.items() if k not in {"step", "epoch"}]


def logged_training_steps(run_id: str) -> dict[str, set[int]]:
    """The steps the run already has of each per-step training metric."""
    c = client()
    keys = [key for key in c.get_run(run_id).data.metrics if _per_step(key)]
    return {key: {m.step for m in c.get_metric_history(run_id, key)} for key in keys}


def log_training_points(run_id: str, points: list[tuple[str, Any, int]], logged: dict[str, set[int]]) -> None:
    """Log the (key, value, step) points whose step `logged` (the run's steps per key) lacks, and add them to it: an
    MLflow metric history cannot drop a point, so each step is logged once."""
    new = [(key, value, step) for key, value, step in points if step not in logged.get(key, ())]
    _log_metrics(run_id, new)
    for key, _, step in new:
        logged.setdefault(key, set()).add(step)


def log_training_history(run_id: str, history_path: Path) -> None:
    """Per-step training metrics (loss, learning rate, grad norm, ...) from history.json as MLflow metric histories,
    except the points the run has: the train stage logs each entry live as training makes it
    (ftcore/training/callbacks.py: LiveMetrics), so this adds only what live logging missed (an entry a tracking
    hiccup lost, the steps before a checkpoint that a new run resumed from)."""
    history = json.loads(Path(history_path).read_text())
    log_training_points(run_id, training_points(history), logged_training_steps(run_id))


def _log_metrics(run_id: str, metrics: list[tuple[str, Any, int]]) -> None:
    """Log (key, value, step) triples, skipping non-numbers, in the batches MLflow accepts (at most 1000)."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(key, float(value), now, step) for key, value, step in metrics if _is_number(value)]
    c = client()
    for i in range(0, len(batch), 500):
        c.log_batch(run_id, metrics=batch[i : i + 500])


def log_dataset(run_id: str, path: Path, name: str, dataset_hash: str, context: str) -> None:
    """Record a dataset split as an MLflow dataset input: its digest is the split's own content hash, and a tag
    carries the hash of the whole cleaned dataset it belongs to."""
    import mlflow
    import pandas as pd
    from mlflow.entities import DatasetInput, InputTag

    from ftcore.parquet_io import frame_hash

    frame = pd.read_parquet(path)
    dataset = mlflow.data.from_pandas(frame, source=str(path), name=name, digest=frame_hash(frame)[:36])
    tags = [InputTag(key="mlflow.data.context", value=context), InputTag(key="ftflow.dataset_hash", value=dataset_hash)]
    client().log_inputs(run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags=tags)])


def set_run_tags(run_id: str, tags: dict[str, str]) -> None:
    c = client()
    for k, v in tags.items():
        c.set_tag(run_id, k, v)


def describe_run(run_id: str, description: str) -> None:
    """The run's description (markdown) at the top of its page in MLflow's UI."""
    client().set_tag(run_id, "mlflow.note.content", description)


def download_run_artifact(run_id: str, artifact_path: str, dst: Path) -> Path:
    """One artifact of a run (a file or folder) into the existing folder `dst`; returns its local path. A missing
    artifact raises FileNotFoundError."""
    import mlflow
    from mlflow.exceptions import MlflowException

    run_id = _producing_run(run_id, artifact_path)
    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path,
                                                        dst_path=str(dst), tracking_uri=tracking_uri()))
    except (MlflowException, OSError) as e:
        raise FileNotFoundError(f"{artifact_path} of run {run_id}: {str(e).splitlines()[0]}") from None


def _producing_run(run_id: str, artifact_path: str) -> str:
    """The run that holds a stage's artifact (`stages/<stage>/...`): where the stage came from the cache, the run
    that produced it, which log_stage_output names in a tag."""
    from mlflow.exceptions import MlflowException

    parts = artifact_path.split("/")
    if parts[0] != "stages" or len(parts) < 2:
        return run_id
    try:
        return client().get_run(run_id).data.tags.get(f"ftflow.stage.{parts[1]}.run", run_id)
    except MlflowException:
        return run_id  # an unknown run: the download says so


def log_pyfunc(run_id: str, artifact_path: str, model_code: Path, artifacts: dict[str, Path], signature,
               input_example, pip_requirements: list[str], code_paths: list[Path]) -> str:
    """Save a pyfunc model whose `model_code` file builds it (MLflow's models from code) and log it as the run's
    `artifact_path`; returns its `runs:/` URI. Saved and then logged rather than `log_model`: that would make an
    MLflow 3 LoggedModel outside the run's artifacts, and needs the fluent active run."""
    import tempfile

    import mlflow

    home().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pyfunc.", dir=home()) as tmp:  # it holds a copy of the weights
        path = Path(tmp) / "model"
        mlflow.pyfunc.save_model(str(path), python_model=str(model_code),
                                 artifacts={k: str(v) for k, v in artifacts.items()}, signature=signature,
                                 input_example=input_example, pip_requirements=pip_requirements,
                                 code_paths=[str(p) for p in code_paths])
        client().log_artifacts(run_id, str(path), artifact_path=artifact_path)
    return f"runs:/{run_id}/{artifact_path}"


# --- helpers ---------------------------------------------------------------------------------------------------


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(tree, list) and any(isinstance(v, dict | list) for v in tree):
        out = {}
        for i, v in enumerate(tree):
            out.update(flatten(v, f"{prefix}{i}."))
        return out
    return {prefix.rstrip("."): tree}


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _yaml(obj: Any) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False)


def log_stage_output(run_id: str, stage: str, output, cached: bool) -> None:
    """A stage's outcome in the current run: its metrics (`<stage>/<name>`), its status tag `ftflow.stage.<stage>`
    (completed or cached) and the MLflow run that produced the output (`ftflow.stage.<stage>.run`).

    A stage that ran now also logs its artifacts, dataset inputs (clean_balance) and the training history points not
    logged live. A cached stage logs no more: its artifacts and per-step history are in the run that produced it,
    and logging them again made a cached re-run look like a second training. Its summary metrics are still logged,
    being a few numbers per stage, so that MLflow's runs list compares every run on every stage; and
    download_run_artifact follows the tag to the producing run."""
    from ftcore.outputs import DatasetOutput, TrainOutput

    if output.mlflow_run_id is not None:
        client().set_tag(run_id, f"ftflow.stage.{stage}.run", output.mlflow_run_id)
    log_stage(run_id, stage, output.metrics, {} if cached else output.artifacts, cached)
    if cached:
        return
    if isinstance(output, DatasetOutput) and "train" in output.splits:
        for split, path in output.splits.items():
            context = "training" if split == "train" else split
            log_dataset(run_id, path, f"{stage}-{split}", output.content_hash, context)
    if isinstance(output, TrainOutput):
        log_training_history(run_id, output.history_path)


# --- monitoring ------------------------------------------------------------------------------------------------


def log_monitor_run(experiment: str, run_name: str, metrics: dict[str, float], artifacts: list[Path],
                    tags: dict[str, str]) -> str:
    """One finished run per monitor pass in `experiment` (e.g. `clinical-qa-monitor`): metrics under their own
    names, the report files at the run's root, the outcome as tags. Returns the run id."""
    c = client()
    run_id = c.create_run(_experiment_id(c, experiment), run_name=run_name, tags=tags).info.run_id
    _log_metrics(run_id, [(k, v, 0) for k, v in metrics.items()])
    for path in artifacts:
        c.log_artifact(run_id, str(path))
    c.set_terminated(run_id, status="FINISHED")
    return run_id
