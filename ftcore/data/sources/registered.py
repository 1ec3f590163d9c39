"""A registered version's dataset as a source (`type: registered`): one split of the rows its run trained and
tested on, read from the run's recorded dataset in batches. A `merge:` recipe scores the merged adapter on each
source's own test split this way. The recipe's alias is pinned to a version when the run starts (ftcore/pins.py),
so the collect stage reads `models:/NAME/VERSION`."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow.dataset as ds

from ftcore.data.retained import version_dataset
from ftcore.data.sources import ROW_ID, Chunk
from ftcore.data.sources.config import RegisteredSource
from ftcore.errors import DataError
from ftcore.models.config import MODEL_URI

SPLIT = "split"  # the recorded dataset's column naming each row's split


def read_registered(source: RegisteredSource, batch_rows: int) -> Iterator[Chunk]:
    name, version = pinned_version(source.model)
    where = f"data.sources ({source.label()})"
    rows = ds.dataset(version_dataset(name, version, where), format="parquet")
    if SPLIT not in rows.schema.names:
        raise DataError(f"{where}: the dataset of {name}/{version} has no {SPLIT!r} column; register it again with "
                        "this version of ftflow")
    first_row = 1
    for batch in rows.to_batches(filter=ds.field(SPLIT) == source.split, batch_size=batch_rows):
        if batch.num_rows == 0:
            continue
        frame = batch.to_pandas().drop(columns=[SPLIT])
        frame[ROW_ID] = range(first_row, first_row + len(frame))
        first_row += len(frame)
        yield Chunk(rows=frame, origin=f"{name}/{version} {source.split}")


def pinned_version(uri: str) -> tuple[str, str]:
    """(name, version) of a `models:/NAME/VERSION` URI; an alias here means the run did not pin it."""
    match = MODEL_URI.match(uri)
    if match is None or match["version"] is None:
        raise ValueError(f"{uri}: a registered source is read at a pinned version (models:/NAME/VERSION)")
    return match["name"], match["version"]
