"""A Hugging Face dataset as a source: a folder written by `save_to_disk`, or a hub id where the hub is reachable.

The dataset is memory-mapped Arrow; it is read `batch_rows` rows at a time, never converted whole.
"""

from __future__ import annotations

from collections.abc import Iterator

import datasets
import pandas as pd

from ftcore.data.sources import ROW_ID, Chunk
from ftcore.data.sources.config import HfDatasetSource
from ftcore.errors import DataError, first_line


def read_hf_dataset(source: HfDatasetSource, batch_rows: int) -> Iterator[Chunk]:
    where = f"data.sources ({source.label()} {source.path})"
    dataset = _undecoded_images(_pick_split(_load(source, where), source, where))
    origin = f"{source.path}[{source.split}]" if source.split else source.path
    first_row = 1
    for batch in dataset.iter(batch_size=batch_rows):
        # Python objects (columns -> lists), not the pandas format: that turns a null into NaN and an int column with
        # a null into floats, differently from one chunk to the next. object dtype keeps None and ints as they are.
        frame = pd.DataFrame(batch, dtype=object)
        frame[ROW_ID] = range(first_row, first_row + len(frame))
        first_row += len(frame)
        yield Chunk(rows=frame, origin=origin, folder=source.local_path())


def _undecoded_images(dataset: datasets.Dataset) -> datasets.Dataset:
    """Image columns as their stored bytes ({"bytes", "path"}) rather than decoded pictures: collect stores the bytes
    as they are, and decoding is what the image checks of the clean stage do (and quarantine when it fails)."""
    for name, feature in dataset.features.items():
        if isinstance(feature, datasets.Image):
            dataset = dataset.cast_column(name, datasets.Image(decode=False))
        elif isinstance(getattr(feature, "feature", None), datasets.Image):  # a list of images
            dataset = dataset.cast_column(name, type(feature)(datasets.Image(decode=False)))
    return dataset


def _load(source: HfDatasetSource, where: str) -> datasets.Dataset | datasets.DatasetDict:
    local = source.local_path()
    if local is not None:
        try:
            return datasets.load_from_disk(str(local))
        except FileNotFoundError:
            raise DataError(f"{where}: not a dataset folder; write one with Dataset.save_to_disk(folder) or "
                            f"DatasetDict.save_to_disk(folder)") from None
    try:
        return datasets.load_dataset(source.path, source.config_name, split=source.split)
    except ConnectionError:  # datasets raises it both offline (HF_HUB_OFFLINE=1) and on a network error
        raise DataError(f"{where}: no such local folder, and the Hugging Face hub cannot be reached; on a machine "
                        f"with access run datasets.load_dataset({source.path!r}).save_to_disk(folder) and set "
                        f"path to that folder") from None
    except (FileNotFoundError, ValueError) as e:  # DatasetNotFoundError, an unknown split or config name
        raise DataError(f"{where}: {first_line(e)}") from None


def _pick_split(loaded: datasets.Dataset | datasets.DatasetDict, source: HfDatasetSource,
                where: str) -> datasets.Dataset:
    if isinstance(loaded, datasets.Dataset):
        if source.split and source.local_path() is not None:
            # A folder holding one Dataset has no splits; reading all of it instead would be a silent surprise.
            raise DataError(f"{where}: the folder holds a single Dataset, which has no splits; remove split")
        return loaded
    splits = ", ".join(loaded)
    if source.split is None:
        raise DataError(f"{where}: the dataset has splits {splits}; set split to one of them")
    if source.split not in loaded:
        raise DataError(f"{where}: no split {source.split!r}; the dataset has {splits}")
    return loaded[source.split]
