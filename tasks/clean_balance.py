import sys

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

import ftcore.data
import ftcore.registry
from ftcore.config import BalanceConfig, CleanConfig, DataConfig, RuntimeConfig
from ftcore.data.clean import clean_and_split
from ftcore.outputs import DatasetOutput
from ftcore.paths import stage_dir
from ftcore.registry import discover_steps
from tasks.common import source_hash, stage_inputs, stage_task
from tasks.parallel import part_mapper


def step_source_hash(clean: CleanConfig) -> str:
    """Data engineers' steps live outside ftcore, so the source of the steps a recipe uses joins the cache key."""
    steps = discover_steps()
    return source_hash(sorted({sys.modules[steps[s.step].module] for s in clean.steps}, key=lambda m: m.__name__))


@stage_task("clean_balance", code=[ftcore.data, ftcore.registry],
            plugin_code=lambda params: step_source_hash(params["clean"]))
def clean_balance(
    collected: DatasetOutput, clean: CleanConfig, balance: BalanceConfig, data: DataConfig, runtime: RuntimeConfig
) -> DatasetOutput:
    """Clean with the recipe's steps, quarantine what they drop, balance, and split."""
    out_dir = stage_dir("clean_balance", stage_inputs(collected=collected.content_hash, clean=clean, balance=balance,
                                                      data=data, steps=step_source_hash(clean)))
    out = clean_and_split(collected, clean, balance, data, out_dir, runtime.batch_rows, part_mapper(runtime))
    create_markdown_artifact(out.artifacts["data_card"].read_text(encoding="utf-8"), key="data-card",
                             description="rows per cleaning step, splits, lengths, quarantine reasons, examples")
    m = out.metrics
    get_run_logger().info(
        "kept %d of %d rows (%d quarantined); train/validation/test = %d/%d/%d",
        m["rows_kept"], m["rows_in"], m["rows_quarantined"], m["rows_train"], m["rows_validation"], m["rows_test"],
    )
    return out
