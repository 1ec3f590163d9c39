"""Mistakes on the command line itself (an option that is not a number, a missing argument, a misspelt command or
option): one `error:` line naming it, exit 2, as every other user error, not click's boxed usage text."""

from __future__ import annotations

import pytest

from tests.bad_input.harness import assert_user_error, invoke
from tests.conftest import DEMO_RECIPE


@pytest.mark.parametrize(("args", "fragments"), [
    pytest.param(["serve", "models:/x/1", "--port", "abc"], ("'--port'", "valid integer", "serve --help`"),
                 id="port-not-a-number"),
    pytest.param(["plan", DEMO_RECIPE, "--memory-gb", "-1"], ("'--memory-gb'", "plan --help`"),
                 id="memory-below-its-minimum"),
    pytest.param(["trian", DEMO_RECIPE], ("No such command 'trian'", " --help`"), id="unknown-command"),
    pytest.param(["run"], ("Missing argument",), id="missing-recipe-argument"),
    pytest.param(["validate", DEMO_RECIPE, "--sett", "train.epochs=1"], ("--sett", "--set"), id="misspelt-option"),
    pytest.param(["export", "models:/x/1", "--tolerance", "much"], ("'--tolerance'",), id="option-not-a-number"),
])
def test_a_command_line_mistake_is_one_line(args, fragments, capfd):
    assert_user_error(invoke(args, capfd), *fragments)
