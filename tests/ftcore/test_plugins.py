"""The one plugin mechanism (ftcore/plugins.py) every kind of plugin uses: cleaning steps, reward functions, domain
metrics, toxicity scorers and augmenters."""

import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

from ftcore import plugins
from ftcore.alignment.rewards import REWARDS
from ftcore.data.augment import AUGMENTERS
from ftcore.errors import UserError
from ftcore.evaluation.domain import METRICS
from ftcore.plugins import Plugin, Registry, UnknownPlugin
from ftcore.registry import STEPS
from ftcore.safety.toxicity import TOXICITY_SCORERS


@dataclass(frozen=True)
class Widget(Plugin):
    size: int = 1


def from_module(module: str):
    """A plugin function that says it was defined in `module`."""

    def widget():
        """Turns the crank.

        More words."""

    widget.__module__ = module
    return widget


def test_a_name_registered_by_two_modules_is_refused_naming_both():
    widgets = Registry("widget", Widget)
    widgets.register("crank", size=2)(from_module("team_a.widgets"))
    widgets.register("crank", size=3)(from_module("team_a.widgets"))  # the same module again: a reload
    assert widgets.get("crank").size == 3
    with pytest.raises(ValueError, match=r"widget 'crank' is registered twice: team_a\.widgets and team_b\.widgets"):
        widgets.register("crank")(from_module("team_b.widgets"))
    assert widgets.get("crank").module == "team_a.widgets"


def test_an_unknown_name_lists_the_registered_ones():
    widgets = Registry("widget", Widget, hint="add one with @widget")
    for name in ("lever", "crank"):
        widgets.register(name)(from_module("team_a.widgets"))
    with pytest.raises(UnknownPlugin) as raised:
        widgets.get("cranck")
    assert str(raised.value) == "unknown widget 'cranck'; available: crank, lever (add one with @widget)"
    # A KeyError to lookups, a ValueError to pydantic validators, a one-line UserError to the CLI.
    assert isinstance(raised.value, KeyError | ValueError) and isinstance(raised.value, UserError)
    with pytest.raises(UnknownPlugin, match="available: none"):
        Registry("widget", Widget).get("crank")
    with pytest.raises(UnknownPlugin, match="unknown widget 'gear'"):
        widgets.modules(["crank", "gear"])


def test_an_entry_keeps_its_module_and_first_doc_line():
    widgets = Registry("widget", Widget)
    fn = widgets.register("crank")(from_module("team_a.widgets"))
    entry = widgets.get("crank")
    assert entry.fn is fn and entry.doc == "Turns the crank." and entry.module == "team_a.widgets"
    assert widgets.modules(["crank", "crank"]) == {"team_a.widgets"}
    assert widgets.names() == ["crank"] and list(widgets.entries()) == ["crank"] and "crank" in widgets
    widgets.unregister("crank")
    assert "crank" not in widgets


def test_entry_points_of_the_group_are_loaded_once_on_first_use(monkeypatch):
    widgets = Registry("widget", Widget, group="ftflow.widgets")
    loaded = []

    class Point:
        module = "their_package.widgets"  # as importlib.metadata.EntryPoint's

        def load(self):
            loaded.append(1)
            widgets.register("gear")(from_module("their_package.widgets"))

    def entry_points(group):
        assert group == "ftflow.widgets"
        return [Point()]

    monkeypatch.setattr(plugins, "entry_points", entry_points)
    widgets.register("crank")(from_module("team_a.widgets"))
    assert loaded == []  # registering loads nothing
    assert widgets.names() == ["crank", "gear"]
    assert widgets.get("gear").module == "their_package.widgets"
    assert "lever" not in widgets and widgets.entries().keys() == {"crank", "gear"}
    assert loaded == [1]


def test_built_in_modules_are_imported_by_name_on_first_use(tmp_path, monkeypatch):
    widgets = Registry("widget", Widget, builtins=["builtin_widgets_for_test"])
    api = types.ModuleType("widget_api_for_test")
    api.WIDGETS = widgets
    monkeypatch.setitem(sys.modules, api.__name__, api)
    (tmp_path / "builtin_widgets_for_test.py").write_text(
        "from widget_api_for_test import WIDGETS\n\n\n"
        "@WIDGETS.register('spin', size=5)\n"
        "def spin():\n    '''Spins.'''\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert "builtin_widgets_for_test" not in sys.modules  # declaring the registry imports nothing
        assert widgets.get("spin").size == 5
        assert widgets.modules(["spin"]) == {"builtin_widgets_for_test"}
    finally:
        sys.modules.pop("builtin_widgets_for_test", None)


def test_ftcore_step_modules_load_only_when_a_step_is_looked_up():
    code = ("import sys\n"
            "from ftcore.registry import STEPS\n"
            "assert not [m for m in sys.modules if m.startswith('ftcore.data.steps')], 'imported with the API'\n"
            "assert STEPS.get('fix_unicode').module == 'ftcore.data.steps.text'\n"
            "assert STEPS.get('drop_short').module == 'data_recipes.steps.drop_short'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(("registry", "group", "example"), [
    (STEPS, "ftflow.cleaning_steps", "drop_duplicates"),
    (REWARDS, "ftflow.reward_functions", "safe_refusal"),
    (METRICS, "ftflow.metrics", "clinical_terms"),
    (TOXICITY_SCORERS, "ftflow.cleaning_steps", "lexicon"),  # data engineers' scorers live in step modules
    (AUGMENTERS, "ftflow.augmenters", "random_swap"),
])
def test_every_kind_of_plugin_uses_the_one_registry(registry, group, example):
    assert isinstance(registry, Registry) and registry.group == group
    assert example in registry.names() and registry.get(example).name == example


def test_steps_from_another_checkout_than_the_one_worked_in_are_one_warning(tmp_path):
    """The venv is installed from this checkout (A); a data engineer works in checkout B, whose new step would be
    silently missing from `ftflow steps` and runs: ftflow says so, naming both folders and the fix."""
    other = tmp_path / "checkout-b"
    (other / ".git").mkdir(parents=True)
    (other / "data_recipes" / "steps").mkdir(parents=True)
    for init in ("data_recipes/__init__.py", "data_recipes/steps/__init__.py"):
        (other / init).write_text("")
    (other / "docs").mkdir()  # in a sub-folder too: the git root's data_recipes counts
    ftflow = [str(Path(sys.executable).parent / "ftflow"), "steps"]  # the venv's command, as the engineer runs it
    listed = subprocess.run(ftflow, cwd=other / "docs", capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    imported = Path(plugins.__file__).resolve().parents[1] / "data_recipes"
    assert listed.stderr.splitlines() == [
        f"data_recipes is imported from {imported}, not from this checkout's {other / 'data_recipes'}: its plugins "
        f"are not the ones used; run `pip install -e .` in {other}, or work in {imported.parent}"]
    assert "drop_short" in listed.stdout  # checkout A's steps, still listed
    # In the checkout the venv was installed from, nothing to say.
    here = subprocess.run(ftflow, cwd=imported.parent, capture_output=True, text=True, timeout=120)
    assert here.returncode == 0 and here.stderr == ""
