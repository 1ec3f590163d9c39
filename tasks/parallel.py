"""Fanning the clean stage's batches out to a Dask cluster through Prefect's DaskTaskRunner.

ftcore plans the work as independent parts and takes a `map_parts(fn, parts)` callable; here that callable runs a
small Prefect flow whose task runner is Dask, so each part is a Prefect task run on a Dask worker (visible in the
Prefect UI) and the stage stays one cached, retryable task around it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client

from ftcore.data.clean import MapParts, PartResult
from ftcore.data.config import DaskConfig, RuntimeConfig

if TYPE_CHECKING:
    from prefect_dask import DaskTaskRunner


@task(name="clean-part", cache_policy=NO_CACHE)
def clean_one_part(fn: Callable[[Path], PartResult], part: Path) -> PartResult:
    return fn(part)


@flow(name="clean-parts", validate_parameters=False, log_prints=False)
def clean_parts(fn: Callable[[Path], PartResult], parts: list[Path]) -> list[PartResult]:
    return [future.result() for future in clean_one_part.map(unmapped(fn), parts)]


def dask_runner(cfg: DaskConfig) -> DaskTaskRunner:
    # Imported here: dask and distributed take ~0.3 s to import, which every run (a cached one too) would pay.
    from prefect_dask import DaskTaskRunner

    if cfg.address:  # its workers report to the Prefect API their own PREFECT_API_URL names (docs/scale-out.md)
        return DaskTaskRunner(address=cfg.address)
    # Worker processes (not threads): the steps are Python-bound, so only processes run them in parallel.
    return DaskTaskRunner(cluster_kwargs={"n_workers": cfg.n_workers, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": ":0", "env": worker_environment()})


def worker_environment() -> dict[str, str]:
    """Local workers report their task runs to this process's Prefect API. Left to themselves, with the embedded
    defaults (no PREFECT_API_URL), each would start an ephemeral API of its own: seconds per worker, every time."""
    with get_client(sync_client=True) as client:
        return {"PREFECT_API_URL": str(client.api_url)}


def part_mapper(runtime: RuntimeConfig) -> MapParts:
    """How the clean stage maps over its parts: in this process, or on Dask when the recipe asks."""
    if runtime.task_runner != "dask":
        return map

    def map_on_dask(fn: Callable[[Path], PartResult], parts: list[Path]) -> list[PartResult]:
        return clean_parts.with_options(task_runner=dask_runner(runtime.dask))(fn, parts)

    return map_on_dask
