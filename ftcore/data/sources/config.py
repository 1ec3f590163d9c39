"""What a recipe's `data.sources[*]` may be: files, a SQL query, HTTP URLs, a Hugging Face dataset.

Every source maps its own columns onto the canonical ones of `data.format` with `columns:`. Secrets never appear in
a recipe: a SQL URL or an HTTP header names them as `${env:NAME}` or `${secret:BLOCK}` placeholders, resolved when
the source is read (see ftcore.data.sources.secrets).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

PLACEHOLDER = re.compile(r"\$\{(env|secret):([A-Za-z0-9_.\-/]+)\}")
# Numbers must survive the trip into torch, numpy and databases, which hold 64-bit integers.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class RecipeModel(BaseModel):
    """Base of every model a recipe's values are validated into (sections, sources, plugin parameters): a number
    is finite and fits in 64 bits, so a value that passes validation cannot overflow in a stage later (a float
    `1e400` is inf; without this it passes `gt=0` and ends in an OverflowError in train, retried for nothing)."""

    model_config = ConfigDict(allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _numbers_fit(cls, value: Any) -> Any:
        # allow_inf_nan covers float fields; this covers ints, and the numbers inside untyped values (Any).
        problem = number_problem(value)
        if problem:
            raise ValueError(problem)
        return value


def number_problem(value: Any, where: str = "") -> str | None:
    """Why a value (or a number nested in its lists and mappings) cannot be used: not finite, or beyond 64 bits."""
    at = f" (at {where})" if where else ""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} is not a finite number{at}"
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        return f"{value} does not fit in 64 bits (at most {INT64_MAX}){at}"
    if isinstance(value, dict | list | tuple):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if problem := number_problem(item, f"{where}.{key}" if where else str(key)):
                return problem
    return None


class Strict(RecipeModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
# Random seeds go to numpy, which takes 0 <= seed < 2**32 (random and torch take more).
Seed = Annotated[int, Field(ge=0, lt=2**32, description="random seed, 0 to 2**32 - 1")]
# Timeouts and delays end in time.sleep, socket timeouts and timedeltas, which overflow on huge values; a day is
# beyond any wait a stage should make.
MAX_WAIT_S = 86_400.0
# Retries double their delay each time: ten keep the longest wait within a timedelta and a sane run.
MAX_RETRIES = 10


class SourceBase(Strict):
    columns: dict[str, str] = Field(default_factory=dict, description="canonical column -> column in this source")
    name: str | None = Field(None, description="tag for this source's rows (column `source`); default: file/URL")
    task: str | None = Field(None, description="task multitask: the data.tasks entry this source's rows belong to "
                                               "(column `task`)")
    derive_prompt: bool = Field(
        False, description="preference format: the prompt is the dialogue both answers share, up to the last "
                           "'Assistant:' turn (HH-RLHF style full dialogues in chosen/rejected)")

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


# Names of URL query parameters and HTTP headers that carry credentials.
SECRET_NAME = re.compile(r"pass|pwd|secret|token|api[-_]?key|access[-_]?key|credential|signature|^auth(?!or)|^key$"
                         r"|^sig$", re.IGNORECASE)


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


def check_http_url_secrets(url: str) -> None:
    """An HTTP URL carries no credential: URLs appear in messages, logs and the rows' `source` column."""
    parts = urlsplit(url)
    if parts.password is not None:
        raise ValueError(f"{_without_userinfo(url)}: the URL contains a password; send credentials in a header "
                         "written with ${env:NAME} or ${secret:BLOCK}")
    secret_keys = [key for key, _ in parse_qsl(parts.query, keep_blank_values=True) if SECRET_NAME.search(key)]
    if secret_keys:
        raise ValueError(f"{_without_userinfo(url).split('?')[0]}: query parameter {', '.join(secret_keys)} carries a "
                         "credential; send it in a header written with ${env:NAME} or ${secret:BLOCK}")


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=parts.hostname or "").geturl() if parts.password is not None else url


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


Source = Annotated[FileSource | SqlSource | HttpSource | HfDatasetSource, Field(discriminator="type")]
SOURCE_TYPES = frozenset({"jsonl", "csv", "json", "parquet", "sql", "http", "hf_dataset"})


def resolve_relative(path: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    if base is not None and not path.is_absolute():
        return Path(os.path.normpath(Path(base) / path))
    return path


def existing_relative(path: Path | None, info: ValidationInfo, expected: str) -> Path | None:
    """An optional recipe-relative file that must exist; the error names it and what it should hold."""
    if path is None:
        return None
    path = resolve_relative(path, info)
    if not path.is_file():
        raise ValueError(f"{path} not found; give {expected}")
    return path


def _is_glob(path: Path) -> bool:
    return any(c in str(path) for c in "*?[")


def _expand(pattern: Path) -> list[Path]:
    return sorted(p for p in Path(pattern.anchor).glob(str(pattern.relative_to(pattern.anchor))) if p.is_file())


class PluginSpec(Strict):
    """A recipe entry naming a registered plugin (a reward function, a domain metric), with the plugin's own
    parameters beside the name, checked against its params model when the recipe loads."""

    model_config = ConfigDict(extra="allow", frozen=True)

    def params_model(self) -> type[BaseModel]:
        """The named plugin's params model; KeyError (listing what is registered) for an unknown name."""
        raise NotImplementedError

    @model_validator(mode="after")
    def _params_fit_the_plugin(self) -> PluginSpec:
        try:
            model = self.params_model()
        except KeyError as e:
            raise ValueError(e.args[0]) from None
        problems = params_problems(model, self.params())
        if problems:
            raise ValueError(problems)
        return self

    def params(self) -> dict:
        return dict(self.model_extra or {})


def params_problems(model: type[BaseModel], params: dict) -> str | None:
    """Every problem of a registered plugin's `params` against its params model, in one line; None when they are
    valid."""
    from pydantic import ValidationError

    try:
        model.model_validate(params)
    except ValidationError as e:
        return "; ".join(describe_error(err) for err in e.errors())
    return None


def describe_error(err: dict) -> str:
    """A pydantic error as `field.path: what was expected`, for one line of a recipe error."""
    # A source's `type` picks its model; pydantic puts that tag in the location (sources.0.csv.path): drop it.
    loc = err["loc"]
    parts = [p for i, p in enumerate(loc) if not (i and isinstance(loc[i - 1], int) and p in SOURCE_TYPES)]
    loc = ".".join(str(p) for p in parts)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field (check the spelling; see docs/recipes.md for the fields)"
    elif err["type"] == "literal_error":
        msg = f"{msg}, got {err['input']!r}"
    # A check across sections has no location of its own: its message starts with the fields it concerns.
    return f"{loc}: {msg}" if loc else msg
