from prefect import get_run_logger

from ftcore.data.collect import CollectJob, collect_stage
from ftcore.data.config import RuntimeConfig
from ftcore.outputs import DatasetOutput
from tasks.common import stage_folder, stage_task
from tasks.secrets import register_prefect_secrets


@stage_task("collect")
def collect(job: CollectJob, runtime: RuntimeConfig) -> DatasetOutput:
    """Read every source into one canonical table. The job's source fingerprints tie the cache to their content."""
    register_prefect_secrets()
    out = collect_stage(job, stage_folder("collect", job), runtime.batch_rows)
    get_run_logger().info("collected %d rows from %d source(s); %d unusable rows quarantined", out.rows,
                          out.metrics["sources"], out.metrics["rows_quarantined"])
    return out
