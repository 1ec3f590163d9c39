"""The floor every recipe config stands on: the strict base model, the shared field types and bounds, recipe-relative
paths, plugin specs, and how a validation error becomes one line of a recipe error."""

from __future__ import annotations

import difflib
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, get_args
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

# The tags of the recipe's discriminated unions (a source's `type`): pydantic puts the tag in an error's location
# (sources.0.csv.path), which a user never wrote. Each union registers its tags where it is defined.
_UNION_TAGS: set[str] = set()


def register_union_tags(tags: set[str] | frozenset[str]) -> None:
    _UNION_TAGS.update(tags)


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
        return "; ".join(describe_error(err, model) for err in e.errors())
    return None


def describe_error(err: dict, model: type[BaseModel] | None = None) -> str:
    """A pydantic error as `field.path: what was expected`, for one line of a recipe error. With the `model` that
    was validated, an unknown field gets the closest field names there as suggestions."""
    loc = err["loc"]
    parts = [p for i, p in enumerate(loc) if not (i and isinstance(loc[i - 1], int) and p in _UNION_TAGS)]
    loc = ".".join(str(p) for p in parts)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = f"unknown field{did_you_mean(str(parts[-1]), fields_at(model, err['loc'][:-1]) if model else [])}"
    elif err["type"] == "literal_error":
        msg = f"{msg}, got {err['input']!r}"
    # A check across sections has no location of its own: its message starts with the fields it concerns.
    return f"{loc}: {msg}" if loc else msg


def did_you_mean(name: str, known: list[str]) -> str:
    """What follows "unknown field" in a message: the closest known names, or where the names are listed."""
    close = difflib.get_close_matches(name, known, n=3)
    if close:
        return f"; did you mean {' or '.join(close)}?"
    return " (check the spelling; see docs/recipes.md for the fields)"


def fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names of the models that can stand at `loc` inside `model` (every member of a union, the items of
    a list or mapping), for suggestions."""
    models = [model]
    for part in loc:
        annotations = [m.model_fields[part].annotation for m in models if part in m.model_fields]
        # A part that is no field (a list index, a mapping's key, a union's tag) leaves the models as they are.
        if annotations:
            models = [m for annotation in annotations for m in _models_in(annotation)]
    return sorted({name for m in models for name in m.model_fields})


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds: itself, or inside Optional, Union, list, dict, Annotated."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


PLACEHOLDER = re.compile(r"\$\{(env|secret):([A-Za-z0-9_.\-/]+)\}")


# Names of URL query parameters and HTTP headers that carry credentials.
SECRET_NAME = re.compile(r"pass|pwd|secret|token|api[-_]?key|access[-_]?key|credential|signature|^auth(?!or)|^key$"
                         r"|^sig$", re.IGNORECASE)


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
