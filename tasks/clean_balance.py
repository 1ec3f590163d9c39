from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from ftcore.data.augment import AUGMENTERS
from ftcore.data.clean import CleanJob, clean_balance_stage
from ftcore.data.config import BalanceConfig, CleanConfig, RuntimeConfig
from ftcore.data.embeddings import encoder_dir
from ftcore.hashing import hash_dir
from ftcore.outputs import DatasetOutput
from ftcore.registry import STEPS
from tasks.common import source_hash, stage_folder, stage_task
from tasks.parallel import part_mapper


def plugin_hash(clean: CleanConfig, balance: BalanceConfig) -> str:
    """What the recipe brings from outside ftcore joins the cache key: the source of the cleaning steps and
    augmenters it uses (data engineers' code), and the encoder folder smote embeds with."""
    modules = STEPS.modules(s.step for s in clean.steps) | AUGMENTERS.modules(balance.augment.operations)
    code = source_hash(modules)
    return code + (hash_dir(encoder_dir(balance.embedding_model)) if balance.strategy == "smote" else "")


@stage_task("clean_balance", plugin_code=lambda params: plugin_hash(params["job"].clean, params["job"].balance))
def clean_balance(job: CleanJob, runtime: RuntimeConfig) -> DatasetOutput:
    """Clean with the recipe's steps, quarantine what they drop, balance, and split."""
    out_dir = stage_folder("clean_balance", job, plugins=plugin_hash(job.clean, job.balance))
    out = clean_balance_stage(job, out_dir, runtime.batch_rows, part_mapper(runtime))
    create_markdown_artifact(out.artifacts["data_card"].read_text(encoding="utf-8"), key="data-card",
                             description="rows per cleaning step, splits, lengths, quarantine reasons, examples")
    m = out.metrics
    get_run_logger().info(
        "kept %d of %d rows (%d quarantined); train/validation/test = %d/%d/%d",
        m["rows_kept"], m["rows_in"], m["rows_quarantined"], m["rows_train"], m["rows_validation"], m["rows_test"],
    )
    return out
