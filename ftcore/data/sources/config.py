"""What a recipe's `data.sources[*]` may be: files, a SQL query, HTTP URLs, a Hugging Face dataset, the dataset a
registered version was trained on.

Every source maps its own columns onto the canonical ones of `data.format` with `columns:`. Secrets never appear in
a recipe: a SQL URL or an HTTP header names them as `${env:NAME}` or `${secret:BLOCK}` placeholders, resolved when
the source is read (see ftcore.data.sources.secrets).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import (
    AfterValidator,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
)

from ftcore.models.config import MODEL_URI
from ftcore.schema import (
    MAX_RETRIES,
    MAX_WAIT_S,
    PLACEHOLDER,
    SECRET_NAME,
    Strict,
    check_http_url_secrets,
    register_union_tags,
    resolve_relative,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import URL


class SourceBase(Strict):
    columns: dict[str, str] = Field(default_factory=dict, description="canonical column -> column in this source")
    name: str | None = Field(None, description="tag for this source's rows (column `source`); default: file/URL")
    task: str | None = Field(None, description="objective multitask: the data.tasks entry this source's rows belong to "
                                               "(column `task`)")
    derive_prompt: bool = Field(
        False, description="preference format: the prompt is the dialogue both answers share, up to the last "
                           "'Assistant:' turn (HH-RLHF style full dialogues in chosen/rejected)")
    prompt: str | None = Field(
        None, description="format image_text: the prompt of every row, for sources of images with a caption or "
                          "transcription and no prompt column (e.g. 'Transcribe the line.')")
    fetch_images: bool = Field(False, description="format image_text: download image values that are http(s) URLs; "
                                                  "off, such rows are quarantined")

    def label(self) -> str:
        """How this source is named in messages."""
        return self.name or self.type


class FileSource(SourceBase):
    type: Literal["jsonl", "csv", "json", "parquet"]
    path: Path = Field(description="a file, or a glob pattern such as data/*.jsonl; .gz files are read as gzip")
    encoding: str = Field("auto", description="auto: BOM, then UTF-8, then detected; or a codec name (latin-1)")
    # csv only: `delimiter: "\t"` reads TSV; without a header row the columns are named "0", "1", ...
    delimiter: str = Field(",", min_length=1, max_length=1)
    header: bool = True
    quotechar: str | None = Field('"', description="null reads quotes as ordinary characters")

    @field_validator("path")
    @classmethod
    def _resolve_and_check(cls, path: Path, info: ValidationInfo) -> Path:
        path = resolve_relative(path, info)
        if _is_glob(path):
            if not _expand(path):
                raise ValueError(f"pattern matches no file: {path} (paths are relative to the recipe's folder)")
        elif not path.is_file():
            raise ValueError(f"file not found: {path} (paths are relative to the recipe's folder)")
        return path

    @field_validator("encoding")
    @classmethod
    def _known_codec(cls, encoding: str) -> str:
        import codecs

        if encoding != "auto":
            try:
                codecs.lookup(encoding)
            except LookupError:
                raise ValueError(f"unknown encoding {encoding!r} (e.g. utf-8, latin-1, cp1252, or auto)") from None
        return encoding

    def files(self) -> list[Path]:
        """The files this source reads: the path itself, or the glob's matches in sorted order."""
        return _expand(self.path) if _is_glob(self.path) else [self.path]

    def label(self) -> str:
        return self.name or str(self.path)


class SqlSource(SourceBase):
    type: Literal["sql"]
    url: str = Field(description="SQLAlchemy URL; put the password in ${env:NAME} or ${secret:BLOCK}")
    query: str = Field(min_length=1, description="a SELECT; :name parameters come from `params`")
    params: dict[str, str | int | float | bool | None] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _no_literal_password(cls, url: str) -> str:
        check_sql_url_secrets(url)
        return url

    @field_validator("url")
    @classmethod
    def _sqlite_relative_to_recipe(cls, url: str, info: ValidationInfo) -> str:
        # A SQLite file is a path like a file source's: relative to the recipe's folder, not the working directory.
        parsed = parse_sql_url(url)
        database = parsed.database
        if parsed.get_backend_name() != "sqlite" or database in (None, "", ":memory:"):
            return url
        if PLACEHOLDER.search(database):  # resolved when the source is read, and used as it resolves
            return url
        return parsed.set(database=str(resolve_relative(Path(database), info))).render_as_string(hide_password=False)

    def label(self) -> str:
        return self.name or "sql"


# A placeholder stands in for a URL part while SQLAlchemy parses the URL: `:`, `}` and `/` in `${env:NAME}` would
# otherwise split the URL at the wrong places (a host placeholder read as host `${env` and port `PGHOST}`).
_STAND_IN = re.compile(r"ftflowplaceholder(\d+)x")


def parse_sql_url(url: str) -> URL:
    """`url` as a SQLAlchemy URL whose user, password, host, database and query values may be placeholders, kept
    whole; ValueError (in words) when it is not a URL. The port must be a number."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    found = [m.group(0) for m in PLACEHOLDER.finditer(url)]
    stand_ins = iter(range(len(found)))
    try:
        parsed = make_url(PLACEHOLDER.sub(lambda _: f"ftflowplaceholder{next(stand_ins)}x", url))
    except ArgumentError:
        raise ValueError("not a SQLAlchemy URL, e.g. postgresql+psycopg2://${env:PGUSER}:${env:PGPASSWORD}@host:5432/"
                         "db or sqlite:///path/to/file.db") from None
    except ValueError:  # SQLAlchemy's int() of the port
        raise ValueError("the port is not a number (a placeholder can stand for the user, password, host, database "
                         "or a query value, not the port)") from None

    def restore(value):
        if isinstance(value, tuple):
            return tuple(restore(v) for v in value)
        return _STAND_IN.sub(lambda m: found[int(m.group(1))], value) if isinstance(value, str) else value

    return parsed.set(**{part: restore(getattr(parsed, part)) for part in ("username", "password", "host", "database")},
                      query={key: restore(value) for key, value in parsed.query.items()})


def check_sql_url_secrets(url: str) -> None:
    """A SQL URL names its password (and any credential in its query) with placeholders, never literally."""
    parsed = parse_sql_url(url)
    if parsed.password is not None and not PLACEHOLDER.fullmatch(str(parsed.password)):
        raise ValueError("the URL contains a password: write ${env:NAME} (an environment variable) or "
                         "${secret:BLOCK} (a Prefect Secret block) in its place")
    for key, value in parsed.query.items():
        values = value if isinstance(value, tuple) else (value,)
        if SECRET_NAME.search(key) and not all(PLACEHOLDER.fullmatch(v) for v in values):
            raise ValueError(f"query parameter {key!r} holds a literal credential: write ${{env:NAME}} or "
                             "${secret:BLOCK} in its place")


# Headers that negotiate content and never carry a credential: only these may be written out in a recipe.
PLAIN_HEADERS = frozenset({"accept", "accept-charset", "accept-encoding", "accept-language", "cache-control",
                           "content-type", "if-modified-since", "if-none-match", "user-agent"})
# A header value that names its secret: an optional scheme (Bearer, Basic, Token) and one placeholder.
NAMED_SECRET = re.compile(rf"(?:[A-Za-z][A-Za-z0-9_-]* )?{PLACEHOLDER.pattern}")


def _no_literal_secrets(headers: dict[str, SecretStr]) -> dict[str, SecretStr]:
    literal = [name for name, value in headers.items()
               if name.lower() not in PLAIN_HEADERS and not NAMED_SECRET.fullmatch(value.get_secret_value())]
    if literal:
        raise ValueError(f"{', '.join(literal)}: a literal value, which would be stored with the run; write "
                         "${env:NAME} or ${secret:BLOCK} in its place, e.g. \"Bearer ${env:API_TOKEN}\" (only "
                         f"{', '.join(sorted(PLAIN_HEADERS))} may be written out)")
    return headers


# Header values are secret-bearing: SecretStr keeps them out of reprs, and JSON (the MLflow params, the logged
# recipe) shows them as `**********`.
Headers = Annotated[dict[str, SecretStr], AfterValidator(_no_literal_secrets)]


class HttpSource(SourceBase):
    type: Literal["http"]
    url: str | list[str] = Field(description="one URL or a list; each response is read in `format`")
    format: Literal["auto", "json", "jsonl", "csv", "html"] = Field(
        "auto", description="auto: from the Content-Type header; html pages become one `text` row each")
    records_path: str | None = Field(None, description="dotted key of the list of records in a JSON body")
    headers: Headers = Field(default_factory=dict, description="credentials as ${env:NAME} or ${secret:BLOCK}")
    timeout_s: float = Field(30.0, gt=0, le=MAX_WAIT_S)
    retries: int = Field(3, ge=0, le=MAX_RETRIES, description="retries on connection errors and 5xx, with "
                                                              "exponential backoff")
    backoff_s: float = Field(1.0, ge=0, le=MAX_WAIT_S, description="first retry delay; doubles each time")

    @field_validator("url")
    @classmethod
    def _http_urls(cls, url: str | list[str]) -> str | list[str]:
        for u in [url] if isinstance(url, str) else url:
            if not re.match(r"^https?://", u):
                raise ValueError(f"{u!r}: an http:// or https:// URL")
            check_http_url_secrets(u)
        return url

    def urls(self) -> list[str]:
        return [self.url] if isinstance(self.url, str) else list(self.url)

    def label(self) -> str:
        return self.name or self.urls()[0]


class HfDatasetSource(SourceBase):
    type: Literal["hf_dataset"]
    path: str = Field(description="a folder written by save_to_disk, or a hub dataset id where the hub is reachable")
    split: str | None = Field(None, description="for a DatasetDict or a hub dataset: which split (e.g. train)")
    config_name: str | None = Field(None, description="hub datasets only: the configuration name")

    @field_validator("path")
    @classmethod
    def _resolve_local(cls, path: str, info: ValidationInfo) -> str:
        # A relative path that exists next to the recipe is a folder; anything else is taken for a hub id.
        local = resolve_relative(Path(path), info)
        return str(local) if local.exists() else path

    def local_path(self) -> Path | None:
        path = Path(self.path)
        return path if path.exists() else None

    def label(self) -> str:
        return self.name or Path(self.path).name


class RegisteredSource(SourceBase):
    """One split of the dataset a registered version was trained and tested on (its run's clean_balance dataset),
    as the model saw it: templated already, so a recipe reading it sets its templates to `{prompt}` and
    `{completion}` (a `merge:` recipe's data does). The alias is pinned when the run starts."""

    type: Literal["registered"]
    model: str = Field(pattern=MODEL_URI.pattern, description="models:/NAME@ALIAS or models:/NAME/VERSION")
    split: Literal["train", "validation", "test"] = "test"

    def label(self) -> str:
        return self.name or f"{self.model} ({self.split})"


Source = Annotated[FileSource | SqlSource | HttpSource | HfDatasetSource | RegisteredSource,
                   Field(discriminator="type")]
SOURCE_TYPES = frozenset({"jsonl", "csv", "json", "parquet", "sql", "http", "hf_dataset", "registered"})
register_union_tags(SOURCE_TYPES)


def _is_glob(path: Path) -> bool:
    return any(c in str(path) for c in "*?[")


def _expand(pattern: Path) -> list[Path]:
    return sorted(p for p in Path(pattern.anchor).glob(str(pattern.relative_to(pattern.anchor))) if p.is_file())
