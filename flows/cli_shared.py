"""What every `ftflow` command shares (flows/cli.py, flows/cli_ops.py): the consoles, the recipe arguments, and the
helpers that make a user's mistake one `error:` line and exit code 2."""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from typer._click.exceptions import NoArgsIsHelpError, UsageError  # typer 0.29 vendors click: its own classes
from typer.core import TyperGroup

from flows.settings import configure_environment, verbose
from ftcore.errors import RecipeError, UserError
from ftcore.quiet import quiet_libraries
from ftcore.recipe import load_recipe

console = Console()
err_console = Console(stderr=True)

RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a field: a.b=value (repeatable).")]


class OneLineUsageErrors(TyperGroup):
    """A usage mistake (an option that is not a number, a missing argument, an unknown option) is one `error:` line
    and exit 2, like every other user error, instead of click's boxed usage text."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except NoArgsIsHelpError:
            raise
        except UsageError as e:
            where = f" (`{e.ctx.command_path} --help` lists what it takes)" if e.ctx else ""
            err_console.print(f"[red]error:[/] {e.format_message()}{where}", highlight=False, soft_wrap=True)
            result = e.exit_code
        if not standalone_mode:
            return result
        sys.exit(result if isinstance(result, int) else 0)


def validated(recipe: Path, overrides: list[str], model_folder: Literal["files", "config", "skip"] = "files",
              search: bool = False):
    """The recipe loaded and checked, its pretrained model's folder (`model_folder`: every file a run loads, its
    config only, or not at all for commands that never load the base) and its method and objective against that
    model's config too; with `search`, its `tune:` section as well (ftcore/recipe.py: load_recipe); otherwise every
    problem on its own `error:` line, and exit 2."""
    from ftcore.models.folders import check_pretrained
    from ftcore.models.support import check_recipe_model

    quiet_libraries()  # the model checks import torch, PEFT, bitsandbytes and torchao, each with its load-time notes
    try:
        loaded = load_recipe(recipe, overrides, search=search)
    except RecipeError as e:
        for problem in e.problems:
            err_console.print(f"[red]error:[/] {problem}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    try:
        if model_folder != "skip":  # the folder first (ftcore/models/folders.py): its config is read next
            check_pretrained(loaded.model, files=model_folder == "files")
            check_recipe_model(loaded.model, loaded.method, loaded.spec, loaded.deploy.exports)
    except UserError as e:
        fail(f"{recipe}: {e}")
    return loaded


def configure() -> None:
    """The environment checked and completed (flows/settings.py): a bad variable is one line."""
    try:
        configure_environment()
    except UserError as e:
        fail(str(e))


def connect_prefect(always: bool = False):
    """PREFECT_API_URL pointed at the local Prefect server reused between runs, started when none answers
    (flows/prefect_server.py): its `LocalServer`, or None where the user's own server (or, unless ALWAYS, Prefect's
    temporary one) is used. Before Prefect is imported: it reads its settings then."""
    from flows import prefect_server

    try:
        if always and not os.environ.get("PREFECT_API_URL"):
            return prefect_server.connect()
        return prefect_server.use_local_server()
    except UserError as e:
        fail(str(e))


def fail(message: str) -> None:
    """MESSAGE as one `error:` line, and exit 2."""
    if verbose() and sys.exc_info()[1] is not None:  # called while handling the error: show where it came from
        traceback.print_exc()
    err_console.print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)
