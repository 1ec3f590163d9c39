"""Collect: read every configured source a chunk at a time, map its columns to the canonical format, tag rows with
their source, and write one versioned Parquet table.

Rows of `data.test_sources` come first and are flagged `holdout`: they always form the test split, and because the
cleaning steps see them first, a training row that duplicates a test row is the one quarantined (no leakage).
Rows that cannot be parsed or used are quarantined (step `collect`, with the source, line number and reason)
instead of aborting the load; rows in (what the readers returned) = rows kept + rows quarantined, checked as in
every other step.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from ftcore.columns import FORMAT_COLUMNS
from ftcore.data.config import DataConfig
from ftcore.data.formats import HOLDOUT, QUARANTINE_COLUMNS, SOURCE, to_canonical
from ftcore.data.images import IMAGES_DIR, ImageReader
from ftcore.data.sources import ROW_ID, read_source
from ftcore.errors import DataError
from ftcore.fs import atomic_dir
from ftcore.outputs import DatasetOutput
from ftcore.parquet_io import ParquetSink

COLLECTED = "collected.parquet"
QUARANTINE = "quarantine.parquet"


class CollectJob(BaseModel):
    """The collect stage's job: the data section, and the sources' fingerprints (the run's pins), which tie the
    cache to the sources' content and are not read here."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data: DataConfig
    sources: dict[str, str]  # path or label -> fingerprint (ftcore/pins.py: source_fingerprints)


def collect_stage(job: CollectJob, out_dir: Path, batch_rows: int = 10_000) -> DatasetOutput:
    cfg = job.data
    columns = {**dict.fromkeys(FORMAT_COLUMNS[cfg.format], "str"), SOURCE: "str", ROW_ID: "int64", HOLDOUT: "bool"}
    with atomic_dir(out_dir) as tmp, ParquetSink(tmp / COLLECTED, columns) as rows, \
            ParquetSink(tmp / QUARANTINE, QUARANTINE_COLUMNS) as quarantine:
        labelled = [("data.test_sources", s, True) for s in cfg.test_sources] + \
                   [("data.sources", s, False) for s in cfg.sources]
        first_reason, rows_read = None, 0
        for field, source, holdout in labelled:
            seen = rows.rows + quarantine.rows
            images = ImageReader(tmp / IMAGES_DIR, source.fetch_images) if cfg.format == "image_text" else None
            for chunk in read_source(source, batch_rows):
                kept, bad = to_canonical(chunk, source, cfg.format, holdout, images)
                rows_read += len(chunk.rows) + len(chunk.bad)
                if len(kept):
                    rows.write(kept)
                if len(bad):
                    quarantine.write(bad)
                    first_reason = first_reason or str(bad["reason"].iloc[0])
            if rows.rows + quarantine.rows == seen:
                index = (cfg.test_sources if holdout else cfg.sources).index(source)
                raise DataError(f"{field}[{index}] ({source.label()}): no rows; check that the source has data "
                                f"(an empty file, table or response)")
        if rows_read != rows.rows + quarantine.rows:  # what the readers returned is what is kept or quarantined
            raise DataError(f"data.sources: {rows_read} rows read but {rows.rows} kept + {quarantine.rows} "
                            f"quarantined; rows would be lost, so nothing is published (report this as a bug)")
        if rows.rows == 0:
            raise DataError(f"data.sources: none of the {quarantine.rows} rows read could be used (first problem: "
                            f"{first_reason}); check the sources' columns and data.format")
    return DatasetOutput(
        path=out_dir,
        content_hash=rows.content_hash,
        splits={"all": out_dir / COLLECTED},
        rows=rows.rows,
        metrics={"rows_in": rows_read, "rows_kept": rows.rows,
                 "rows_quarantined": quarantine.rows, "sources": len(cfg.sources) + len(cfg.test_sources)},
        artifacts={"dataset": out_dir / COLLECTED, "quarantine": out_dir / QUARANTINE},
    )
