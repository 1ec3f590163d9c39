"""Whether a search space fits its recipe: every field it names is one the recipe has, and every value it can take
one the recipe accepts. Checked by building the recipe with each value (a range's two ends, each choice), so the
recipe's own schema and checks decide, before any trial runs."""

from __future__ import annotations

import copy
from typing import Any

from ftcore.tuning.config import Choice, TuneConfig
from ftcore.tuning.study import overrides


def probe_values(param) -> list[Any]:
    """The values of a space entry a recipe is checked with: a choice's each, a range's two ends."""
    return list(param.choice) if isinstance(param, Choice) else list(param.bounds)


def space_problems(raw: dict, tune: TuneConfig, validate) -> list[str]:
    """One line per space field whose path or values the recipe refuses (the first refusal); `validate(raw)` returns
    the recipe's problems for a raw recipe (empty when it loads). Each value is checked alone and beside
    each value of every chosen section name (a rank beside each `method.name`), where its own `when` conditions hold
    (each condition's first value)."""
    base = {k: v for k, v in raw.items() if k != "tune"}
    names = {p: c for p, c in tune.space.items() if isinstance(c, Choice) and not c.when and p.endswith(".name")}
    problems = []
    for path, param in tune.space.items():
        conditions = [(field, values[0]) for field, values in (param.when or {}).items()]
        beside = [[]] + [[(other, value)] for other, choice in names.items()
                         if other != path and other not in (param.when or {}) for value in choice.choice]
        problem = next((p for context in beside for value in probe_values(param)
                        if (p := _refusal(base, [*context, *conditions], path, value, validate))), None)
        if problem:
            problems.append(f"tune.space.{path}: {problem}")
    return problems


def _refusal(base: dict, context: list[tuple[str, Any]], path: str, value: Any, validate) -> str | None:
    """Why the recipe with `context` and `path` = `value` does not load, where it loads with `context` alone."""
    from ftcore.recipe import apply_override

    def problems(settings: list[tuple[str, Any]]) -> list[str]:
        tree = copy.deepcopy(base)
        for item in overrides(dict(settings)):
            apply_override(tree, item)
        return validate(tree)

    try:
        if context and problems(context):
            return None  # the context's own value is refused: reported under its own field
        refused = problems([*context, (path, value)])
    except ValueError as e:
        return str(e)
    if not refused:
        return None
    written = " and ".join(f"{f}={v!r}" for f, v in [*context, (path, value)])
    hint = "".join(f"; if {path} applies to some values of {f} only, add when: {{{f}: VALUES}} listing them"
                   for f, _ in context)
    return f"with {written}: {refused[0]}{hint}"
