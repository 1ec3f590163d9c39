"""The clean stage's batches on a real Dask LocalCluster through Prefect's DaskTaskRunner give exactly the
result of the local run."""

import time

import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

from ftcore.data.clean import clean_balance_stage
from ftcore.data.collect import CollectJob, collect_stage
from ftcore.data.config import RuntimeConfig
from ftcore.jobs import clean_job
from ftcore.recipe import load_recipe
from tasks.parallel import part_mapper
from tests.conftest import REPO


@pytest.mark.usefixtures("prefect_harness")
def test_cleaning_on_a_dask_cluster_matches_the_local_run(tmp_path, shared_data):
    recipe = load_recipe(REPO / "data_recipes" / "recipes" / "shared" / "medquad_qa.yaml")
    collected = collect_stage(CollectJob(data=recipe.data, sources={}),
                              tmp_path / "collected", batch_rows=200)  # 1026 rows: 6 parts
    dask = RuntimeConfig(task_runner="dask", batch_rows=200, dask={"n_workers": 2})
    on_dask = clean_balance_stage(clean_job(recipe, collected), tmp_path / "dask", 200, part_mapper(dask))
    local = clean_balance_stage(clean_job(recipe, collected), tmp_path / "local", 200)
    assert on_dask.content_hash == local.content_hash
    assert on_dask.metrics == local.metrics
    assert pd.read_parquet(on_dask.artifacts["quarantine"]).equals(pd.read_parquet(local.artifacts["quarantine"]))
    # The six row-by-row steps ran as one Prefect task per part on the cluster; the two dedup steps, which compare
    # rows across parts, ran in this process.
    assert _completed_clean_part_runs(expected=6) == 6


def _completed_clean_part_runs(expected: int, wait_s: float = 20) -> int:
    """Task runs reach the API as events, a moment after they finish: poll briefly."""
    deadline, completed = time.monotonic() + wait_s, 0
    with get_client(sync_client=True) as client:
        while completed < expected and time.monotonic() < deadline:
            runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="clean-part")))
            completed = sum(r.state_name == "Completed" for r in runs)
            time.sleep(0.5)
    return completed
