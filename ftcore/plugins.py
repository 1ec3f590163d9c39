"""One plugin mechanism for every kind of plugin: cleaning steps, reward functions, domain metrics, toxicity scorers
and augmenters.

A kind declares one `Registry` beside its API (`ftcore/registry.py` for cleaning steps, `ftcore/alignment/rewards.py`,
`ftcore/evaluation/domain.py`, `ftcore/safety/toxicity.py`, `ftcore/data/augment.py`), naming its entry-point group
and the modules that hold its built-ins. A plugin is a function registered under a name with the kind's decorator
(`@cleaning_step("name")`, a thin wrapper of `Registry.register`), in a module that is imported before the name is
looked up: one of the built-in modules, or a module an installed package declares in the kind's entry-point group
(ftflow's own `data_recipes.steps` is one). Both are imported by name on the first lookup or listing, once, so a
config module can check a recipe's plugin names through the registry without importing the plugin code itself.
"""

from __future__ import annotations

import functools
import importlib
import logging
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Generic, TypeVar

from ftcore.errors import UserError

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plugin:
    """A registered function: its name, the function and the module it comes from. A kind subclasses this to add
    what it needs (a params model, `stateful`, ...); the fields are filled from `Registry.register`'s keywords."""

    name: str
    fn: Callable[..., Any]
    module: str

    @property
    def doc(self) -> str:
        """The first line of the function's docstring, shown by `ftflow steps` (and rewards, metrics)."""
        return next(iter((self.fn.__doc__ or "").strip().splitlines()), "")


E = TypeVar("E", bound=Plugin)


class UnknownPlugin(UserError, KeyError, ValueError):
    """A name nothing registered; the message lists what is registered. A KeyError (a failed lookup), a ValueError
    (a pydantic validator that looks a recipe's name up reports it as a validation error) and a UserError (the CLI
    prints it as one line)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Registry(Generic[E]):
    """The plugins of one kind, by name.

    `kind` names the kind in messages ("cleaning step"), `entry` is the class of its entries, `group` the entry-point
    group whose modules are imported on first use, and `builtins` the modules holding ftcore's own plugins of the
    kind, also imported on first use (a module that registers plugins and declares the registry may leave it out).
    `hint`, if given, ends the message for an unknown name (how to add one).
    """

    def __init__(self, kind: str, entry: type[E], group: str | None = None, builtins: Sequence[str] = (),
                 hint: str | None = None):
        self.kind = kind
        self.group = group
        self.builtins = tuple(builtins)
        self.hint = hint
        self._entry = entry
        self._entries: dict[str, E] = {}
        self._loaded = False
        self._lock = threading.RLock()

    def register(self, name: str, **fields: Any) -> Callable[[F], F]:
        """A decorator registering the function under `name`, its entry built as `entry(name, fn, module,
        **fields)`; the function itself is returned unchanged."""

        def decorator(fn: F) -> F:
            self.add(self._entry(name=name, fn=fn, module=fn.__module__, **fields))
            return fn

        return decorator

    def add(self, entry: E) -> None:
        """Register `entry`. ValueError when another module registered its name; the same module may register it
        again (a module reloaded)."""
        existing = self._entries.get(entry.name)
        if existing is not None and existing.module != entry.module:
            raise ValueError(f"{self.kind} {entry.name!r} is registered twice: {existing.module} and {entry.module}")
        self._entries[entry.name] = entry

    def unregister(self, name: str) -> None:
        """Forget `name` (a test's or a notebook's throwaway plugin); nothing happens when it is not registered."""
        self._entries.pop(name, None)

    def load(self) -> None:
        """Import the built-in modules, then every module the installed packages declare in the entry-point group:
        they register on import. Done once; later calls return at once."""
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            for module in self.builtins:
                importlib.import_module(module)
            for point in entry_points(group=self.group) if self.group else ():
                point.load()
                warn_if_from_another_checkout(point.module.partition(".")[0])
            self._loaded = True

    def get(self, name: str) -> E:
        """The entry registered as `name`; UnknownPlugin (a KeyError) listing the registered names otherwise."""
        self.load()
        if name not in self._entries:
            hint = f" ({self.hint})" if self.hint else ""
            raise UnknownPlugin(f"unknown {self.kind} {name!r}; available: {', '.join(self.names()) or 'none'}{hint}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        self.load()
        return name in self._entries

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        self.load()
        return sorted(self._entries)

    def entries(self) -> dict[str, E]:
        """Every entry by name (a copy), for listings such as `ftflow steps`."""
        self.load()
        return dict(self._entries)

    def modules(self, names: Iterable[str]) -> set[str]:
        """The modules the named plugins come from: the code a recipe picks by name, whose source belongs in a
        stage's cache key. UnknownPlugin for a name not registered."""
        return {self.get(name).module for name in names}


@functools.cache  # once per package and process: three kinds of plugin come from data_recipes
def warn_if_from_another_checkout(package: str) -> None:
    problem = other_checkout(package, Path.cwd())
    if problem:
        log.warning(problem)


def other_checkout(package: str, cwd: Path) -> str | None:
    """When the plugin package (data_recipes) was imported from another folder than the checkout one works in (a
    `package/` folder in `cwd` or its git root), that checkout's plugins are silently missing: the venv was
    installed from another checkout. The one-line warning names both folders and the fix; None when they agree."""
    module = sys.modules.get(package)
    if module is None or not getattr(module, "__path__", None):
        return None
    imported = Path(next(iter(module.__path__))).resolve()
    for folder in dict.fromkeys(f for f in (cwd, _git_root(cwd)) if f is not None):
        local = folder / package
        if (local / "__init__.py").is_file() and local.resolve() != imported:
            return (f"{package} is imported from {imported}, not from this checkout's {local.resolve()}: its plugins "
                    f"are not the ones used; run `pip install -e .` in {local.resolve().parent}, or work in "
                    f"{imported.parent}")
    return None


def _git_root(folder: Path) -> Path | None:
    return next((parent for parent in [folder, *folder.parents] if (parent / ".git").exists()), None)
