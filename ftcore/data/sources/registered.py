"""A registered version's dataset as a source (`type: registered`): one split of the rows its run trained and
tested on, read from the run's recorded dataset in batches. A `merge:` recipe scores the merged adapter on each
source's own test split this way. The recipe's alias is pinned to a version when the run starts (ftcore/pins.py),
so the collect stage reads `models:/NAME/VERSION`; a version that does not exist is a one-line error."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow.dataset as ds

from ftcore.data.retained import version_dataset
from ftcore.data.sources import ROW_ID, Chunk
from ftcore.data.sources.config import RegisteredSource
from ftcore.errors import DataError
from ftcore.models.registered import pin_reference

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
    """(name, version) of a `models:/NAME/VERSION` URI. A run pins an alias before collect reads it; outside a run
    (`ftflow plan`) the alias is read as it points now."""
    ref = pin_reference(uri, "data.sources")
    return str(ref.name), str(ref.version)
