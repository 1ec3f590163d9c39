from prefect import get_run_logger

from ftcore.config import DataConfig, RuntimeConfig
from ftcore.data.collect import collect as collect_sources
from ftcore.outputs import DatasetOutput
from ftcore.paths import stage_dir
from tasks.common import stage_inputs, stage_task
from tasks.secrets import register_prefect_secrets


@stage_task("collect")
def collect(data: DataConfig, source_hashes: dict[str, str], runtime: RuntimeConfig) -> DatasetOutput:
    """Read every source into one canonical table. `source_hashes` ties the cache to the sources' content."""
    register_prefect_secrets()
    out = collect_sources(data, stage_dir("collect", stage_inputs(data=data, source_hashes=source_hashes)),
                          runtime.batch_rows)
    get_run_logger().info("collected %d rows from %d source(s); %d unusable rows quarantined", out.rows,
                          out.metrics["sources"], out.metrics["rows_quarantined"])
    return out
