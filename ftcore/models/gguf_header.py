"""A GGUF file's metadata and the transformers config it describes, read without its tensors or its vocabulary.

`AutoConfig.from_pretrained(folder, gguf_file=name)` reads most architectures (llama, mistral, qwen2, gemma, phi3,
...) through transformers' older GGUF loader, `load_gguf_checkpoint`, which opens the file with `gguf.GGUFReader`:
that reader turns every token and merge of the vocabulary into its own numpy view, and the loader then decodes each
one: 17 to 20 s here for Llama 3's vocabulary (128k tokens, 280k merges) before one hyperparameter is read.
transformers' newer reader (`read_gguf_metadata`) reads the same metadata in a fraction of a second, counting long
string arrays instead of reading them. `gguf_config` runs the older loader, so the config is exactly the one
`from_pretrained` makes, on a stand-in for GGUFReader built from that metadata.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, NamedTuple

from ftcore.errors import UserError, first_line

TOKENS = "tokenizer.ggml.tokens"
LICENCE = "general.license"
CHAT_TEMPLATE = "tokenizer.chat_template"
FILE_TYPE = "general.file_type"
# Longer arrays (token types, scores) only feed the tokenizer: left out of the stand-in.
LONG_ARRAY = 4096
# gguf.GGUFValueType, as transformers' `_gguf_parse_value` reads them.
INT32, FLOAT32, BOOL, STRING, ARRAY = 5, 6, 7, 8, 9


def read_metadata(path: Path) -> tuple[dict[str, Any], tuple[str, ...]]:
    """(metadata, tensor names) of the GGUF file at `path`; the vocabulary and merges are counted, not read. A file
    that is not GGUF, or is cut short, is a one-line UserError."""
    from transformers.integrations.gguf import read_gguf_metadata

    try:
        return read_gguf_metadata(str(path))
    except (ValueError, KeyError) as e:  # not GGUF, another version, no architecture
        raise UserError(f"MODEL: {path}: {first_line(e)}") from None
    except (struct.error, UnicodeDecodeError, IndexError):
        raise UserError(f"MODEL: {path}: its GGUF header is damaged or cut short; download the file again") from None


class _Field(NamedTuple):
    """What transformers reads of a gguf.ReaderField: the parts, which of them hold the values, and the types."""

    parts: list
    data: list[int]
    types: list[int]


class _Tensor(NamedTuple):
    name: str


class _MetadataReader:
    """Stands in for gguf.GGUFReader in `load_gguf_checkpoint(..., return_tensors=False)`, which reads the metadata
    fields and the tensors' names. The vocabulary, whose length is the config's vocab_size where the file states
    none, is given as that many empty tokens; the long arrays that only a tokenizer reads are left out."""

    def __init__(self, metadata: dict[str, Any], tensor_names: tuple[str, ...]):
        self.tensors = [_Tensor(name) for name in tensor_names]
        self.fields: dict[str, _Field] = {}
        for key, value in metadata.items():
            if key == TOKENS:  # read_gguf_metadata counted it
                self.fields[key] = _Field([b""], [0] * value, [ARRAY, STRING])
            elif isinstance(value, list):
                if len(value) <= LONG_ARRAY:
                    kind = _kind(value[0]) if value else INT32
                    self.fields[key] = _Field([_part(v) for v in value], list(range(len(value))), [ARRAY, kind])
            else:
                self.fields[key] = _Field([_part(value)], [0], [_kind(value)])


def _kind(value: Any) -> int:
    return BOOL if isinstance(value, bool) else FLOAT32 if isinstance(value, float) else \
        STRING if isinstance(value, str) else INT32


def _part(value: Any) -> Any:
    return value.encode() if isinstance(value, str) else [value]


def gguf_config(path: Path, metadata: dict[str, Any], tensor_names: tuple[str, ...]):
    """The transformers config of the GGUF file at `path` (whose `read_metadata` is given), as
    `AutoConfig.from_pretrained(folder, gguf_file=name)` makes it."""
    from unittest import mock

    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoConfig

    try:
        import gguf  # noqa: F401  (transformers' loader imports its reader from it: replaced here while it runs)
    except ImportError:
        raise UserError("MODEL: reading a GGUF file needs the gguf package: pip install 'gguf>=0.19'") from None
    with mock.patch("gguf.GGUFReader", lambda _: _MetadataReader(metadata, tensor_names)):
        try:
            return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
        except (ValueError, StrictDataclassError) as e:  # an architecture transformers' GGUF loader does not map,
            # or maps to values its config class refuses (Gemma 4's per-layer key-value heads)
            raise UserError(f"MODEL: {path}: transformers cannot make a config of this GGUF file ({first_line(e)}); "
                            "it reads GGUF files of llama, mistral, qwen2, gemma, phi3 and other families") from None
