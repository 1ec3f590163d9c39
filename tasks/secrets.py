"""`${secret:BLOCK}` placeholders in data sources, read from Prefect Secret blocks.

ftcore runs without Prefect, so it only knows the `env` kind; the flow calls register_prefect_secrets() before
reading sources to add this one.
"""

from __future__ import annotations

from prefect.blocks.system import Secret

from ftcore.data.sources.secrets import register_resolver
from ftcore.errors import DataError


def register_prefect_secrets() -> None:
    register_resolver("secret", _load_secret)


def _load_secret(name: str) -> str:
    try:
        block = Secret.load(name)
    except ValueError:  # Prefect's "Unable to find block document named ..."
        raise DataError(f"${{secret:{name}}}: no Prefect Secret block named {name!r}; create it in the UI "
                        f"(Blocks > Secret) or with Secret(value=...).save({name!r})") from None
    # The raw stored value, not Secret.get(): get() parses JSON, so a password such as "12345" would become an int.
    value = block.value.get_secret_value()
    if not isinstance(value, str):
        raise DataError(f"${{secret:{name}}}: the Prefect Secret block holds a {type(value).__name__}, "
                        f"not a string")
    return value
