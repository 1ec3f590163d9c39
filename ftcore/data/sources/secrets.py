"""`${env:NAME}` and `${secret:BLOCK}` placeholders in source settings (a SQL URL, HTTP headers).

Each kind of placeholder is looked up by a resolver registered under its name. `env` is built in; `secret` is
registered by the flow (tasks.secrets) because it needs Prefect, which ftcore must run without. Resolved values are
secrets: callers put them into a connection or a request only, never into a message or a log line.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ftcore.errors import DataError
from ftcore.schema import PLACEHOLDER

Resolver = Callable[[str], str]

_RESOLVERS: dict[str, Resolver] = {}


def register_resolver(kind: str, fn: Resolver) -> None:
    """Resolve `${kind:NAME}` placeholders with fn(NAME); fn raises DataError when NAME does not exist."""
    _RESOLVERS[kind] = fn


def resolve(text: str) -> str:
    """`text` with every placeholder replaced by its value; DataError (naming the placeholder) if one is missing."""
    return PLACEHOLDER.sub(lambda m: _lookup(m.group(1), m.group(2)), text)


def _lookup(kind: str, name: str) -> str:
    resolver = _RESOLVERS.get(kind)
    if resolver is None:  # only `secret` can get here: PLACEHOLDER admits env and secret, and env is built in
        raise DataError(f"${{{kind}:{name}}}: Prefect Secret blocks are resolved only when running the flow "
                        f"(ftflow run); use ${{env:NAME}} to read the value from an environment variable instead")
    return resolver(name)


def _env(name: str) -> str:
    value = os.environ.get(name)
    if value is None:
        raise DataError(f"${{env:{name}}}: environment variable {name} is not set; set it before running "
                        f"(export {name}=...)")
    return value


register_resolver("env", _env)
