"""What a recipe's `data.sources[*]` may be: files, a SQL query, HTTP URLs, a Hugging Face dataset.

Every source maps its own columns onto the canonical ones of `data.format` with `columns:`. Secrets never appear in
a recipe: a SQL URL or an HTTP header names them as `${env:NAME}` or `${secret:BLOCK}` placeholders, resolved when
the source is read (see ftcore.data.sources.secrets).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

PLACEHOLDER = re.compile(r"\$\{(env|secret):([A-Za-z0-9_.\-/]+)\}")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]


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
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            password = make_url(url).password
        except ArgumentError:
            raise ValueError("not a SQLAlchemy URL, e.g. postgresql+psycopg2://user:${env:PGPASSWORD}@host/db or "
                             "sqlite:///path/to/file.db") from None
        if password is not None and not PLACEHOLDER.fullmatch(str(password)):
            raise ValueError("the URL contains a password: write ${env:NAME} (an environment variable) or "
                             "${secret:BLOCK} (a Prefect Secret block) in its place")
        return url

    @field_validator("url")
    @classmethod
    def _sqlite_relative_to_recipe(cls, url: str, info: ValidationInfo) -> str:
        # A SQLite file is a path like a file source's: relative to the recipe's folder, not the working directory.
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
            return url
        database = resolve_relative(Path(parsed.database), info)
        return parsed.set(database=str(database)).render_as_string(hide_password=False)

    def label(self) -> str:
        return self.name or "sql"


class HttpSource(SourceBase):
    type: Literal["http"]
    url: str | list[str] = Field(description="one URL or a list; each response is read in `format`")
    format: Literal["auto", "json", "jsonl", "csv", "html"] = Field(
        "auto", description="auto: from the Content-Type header; html pages become one `text` row each")
    records_path: str | None = Field(None, description="dotted key of the list of records in a JSON body")
    headers: dict[str, str] = Field(default_factory=dict, description="values may use ${env:NAME}/${secret:BLOCK}")
    timeout_s: float = Field(30.0, gt=0)
    retries: int = Field(3, ge=0, description="retries on connection errors and 5xx, with exponential backoff")
    backoff_s: float = Field(1.0, ge=0, description="first retry delay; doubles each time")

    @field_validator("url")
    @classmethod
    def _http_urls(cls, url: str | list[str]) -> str | list[str]:
        for u in [url] if isinstance(url, str) else url:
            if not re.match(r"^https?://", u):
                raise ValueError(f"{u!r}: an http:// or https:// URL")
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
    loc = ".".join(str(p) for p in parts) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field (check the spelling; see docs/recipes.md for the fields)"
    elif err["type"] == "literal_error":
        msg = f"{msg}, got {err['input']!r}"
    return f"{loc}: {msg}"
