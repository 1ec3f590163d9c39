"""Reading a source whole in tests, and the one-line error a bad one gives."""

import pytest

from ftcore.data.sources import Chunk, Source, read_source
from ftcore.errors import DataError


def read_all(source: Source, batch_rows: int = 2) -> list[Chunk]:
    return list(read_source(source, batch_rows))


def read_error(source: Source) -> str:
    with pytest.raises(DataError) as info:
        read_all(source)
    message = str(info.value)
    assert "\n" not in message
    return message
