from prefect import get_run_logger

import ftcore.config
import ftcore.data.collect
from ftcore.config import DataConfig
from ftcore.data.collect import collect as collect_sources
from ftcore.outputs import DatasetOutput
from ftcore.paths import stage_dir
from tasks.common import stage_inputs, stage_task


@stage_task("collect", code=[ftcore.data.collect, ftcore.config])
def collect(data: DataConfig, source_hashes: dict[str, str]) -> DatasetOutput:
    """Read every source into one canonical table. `source_hashes` ties the cache to the files' content."""
    out = collect_sources(data, stage_dir("collect", stage_inputs(data=data, source_hashes=source_hashes)))
    get_run_logger().info("collected %d rows from %d source(s); %d malformed rows quarantined", out.rows,
                          len(data.sources), out.metrics["rows_quarantined"])
    return out
