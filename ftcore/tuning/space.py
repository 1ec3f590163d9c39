"""Whether a search space fits its recipe: every field it names is one the recipe has, and every value it can take
one the recipe accepts. Checked by building the recipe with each value (a range's two ends, each choice), so the
recipe's own schema and checks decide, before any trial runs."""

from __future__ import annotations

from typing import Any

from ftcore.tuning.config import Choice, TuneConfig
from ftcore.tuning.study import overrides


def probe_values(param) -> list[Any]:
    """The values of a space entry a recipe is checked with: a choice's each, a range's two ends."""
    return list(param.choice) if isinstance(param, Choice) else list(param.bounds)


def space_problems(tune: TuneConfig, refused) -> list[str]:
    """One line per space field whose path or values the recipe refuses (the first refusal); `refused(items)` returns
    the recipe's problems with the `--set` `items` applied (empty when it loads; ValueError for an item that cannot
    be applied). Each value is checked alone and beside each value of every chosen section name (a rank beside each
    `method.name`), where its own `when` conditions hold (each condition's first value)."""
    names = {p: c for p, c in tune.space.items() if isinstance(c, Choice) and not c.when and p.endswith(".name")}
    problems = []
    for path, param in tune.space.items():
        conditions = [(field, values[0]) for field, values in (param.when or {}).items()]
        beside = [[]] + [[(other, value)] for other, choice in names.items()
                         if other != path and other not in (param.when or {}) for value in choice.choice]
        problem = next((p for context in beside for value in probe_values(param)
                        if (p := _refusal([*context, *conditions], path, value, refused))), None)
        if problem:
            problems.append(f"tune.space.{path}: {problem}")
    return problems


def _refusal(context: list[tuple[str, Any]], path: str, value: Any, refused) -> str | None:
    """Why the recipe with `context` and `path` = `value` does not load, where it loads with `context` alone."""
    try:
        if context and refused(overrides(dict(context))):
            return None  # the context's own value is refused: reported under its own field
        problems = refused(overrides(dict([*context, (path, value)])))
    except ValueError as e:
        return str(e)
    if not problems:
        return None
    written = " and ".join(f"{f}={v!r}" for f, v in [*context, (path, value)])
    hint = "".join(f"; if {path} applies to some values of {f} only, add when: {{{f}: VALUES}} listing them"
                   for f, _ in context)
    return f"with {written}: {problems[0]}{hint}"
