"""The objective is decided in one table (ftcore/objectives.py): no other module of ftcore, tasks or flows compares an
objective's name or keeps its own list of objectives, and every entry names a trainer and a scorer that exist."""

from __future__ import annotations

import ast

import pytest

from ftcore.evaluation.scorers import SCORERS
from ftcore.objectives import OBJECTIVES
from ftcore.training.trainers import TRAINERS
from tests.conftest import REPO

NAMES = frozenset(OBJECTIVES)
TABLE = REPO / "ftcore" / "objectives.py"


def _names_in(node: ast.AST) -> set[str]:
    """The objective names a node is or lists (a constant, or a tuple, list or set of constants)."""
    items = node.elts if isinstance(node, ast.Tuple | ast.List | ast.Set) else [node]
    return {i.value for i in items if isinstance(i, ast.Constant) and i.value in NAMES}


# Fields whose values share words with objective names but mean something else: DPO's algorithm and loss types
# ("dpo", "sft"), the serving API's object ("classification").
UNRELATED = ("algorithm", "loss_type", "object")


def _unrelated(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute | ast.Name) and ast.unparse(node).split(".")[-1] in UNRELATED


def _keyed_by_a_name(node: ast.AST) -> bool:
    """A mapping literal, or a dict(...) call, with an objective's name among its keys."""
    if isinstance(node, ast.Dict):
        return bool(_names_in(ast.Tuple(elts=[k for k in node.keys if k])))
    return isinstance(node, ast.Call) and ast.unparse(node.func) == "dict" and bool({k.arg for k in node.keywords}
                                                                                   & NAMES)


def _decision(node: ast.AST) -> str | None:
    if isinstance(node, ast.Compare):
        operands = [node.left, *node.comparators]
        if any(_names_in(o) for o in operands) and not any(_unrelated(o) for o in operands):
            return f"compares {ast.unparse(node)}"
    elif isinstance(node, ast.MatchValue) and _names_in(node.value):
        return f"case {ast.unparse(node.value)}"
    elif isinstance(node, ast.Subscript) and ast.unparse(node.value).endswith("OBJECTIVES") and _names_in(node.slice):
        return f"looks up {ast.unparse(node)}"
    elif isinstance(node, ast.Tuple | ast.List | ast.Set) and len(_names_in(node)) >= 2:
        return f"lists {ast.unparse(node)}"
    elif _keyed_by_a_name(node):
        return "a mapping keyed by an objective's name"
    return None


def decisions(source: str) -> list[str]:
    """Where code decides by an objective's name: a comparison with a name (or a collection of names), a `case` on
    a name, a lookup of the table by a literal name, a literal collection of two names or more (a hand-kept list of
    objectives), or a mapping keyed by a name."""
    return [f"line {node.lineno}: {found}" for node in ast.walk(ast.parse(source)) if (found := _decision(node))]


@pytest.mark.parametrize("snippet", [
    'if task == "rl": pass',
    'if recipe.objective in ("sft", "multitask"): pass',
    'if recipe.spec.name == "rl": pass',
    'if spec.name in {"sft"}: pass',
    'name = objective.name\nif name == "classification": pass',
    'if o.name != "dapt": pass',
    'if job.objective is OBJECTIVES["rl"]: pass',
    'match goal.task:\n    case "classification": pass',
    'ANSWERING = ("sft", "dpo")',
    'METRICS = {"sft": 1, "dapt": 2}',
    'x = {"rl": 1}.get(job.objective.name)',
    'x = dict(sft=1, dapt=2)',
])
def test_the_scan_finds_a_decision_by_name(snippet):
    assert decisions(snippet)


def test_the_scan_leaves_other_uses_of_the_same_words_alone():
    # DPO's loss types include "sft"; the serving API's object is "classification".
    assert not decisions('loss_type: Literal["sigmoid", "sft"] = "sigmoid"\nif self.algorithm != "dpo": pass\n'
                         'object: Literal["classification"] = "classification"')


def test_no_module_outside_the_table_decides_by_the_objective_s_name():
    found = {}
    for package in ("ftcore", "tasks", "flows"):
        for path in sorted((REPO / package).rglob("*.py")):
            if path != TABLE and (where := decisions(path.read_text(encoding="utf-8"))):
                found[str(path.relative_to(REPO))] = where
    assert not found, f"decide through ftcore/objectives.py instead: {found}"


@pytest.mark.parametrize("name", sorted(NAMES))
def test_every_objective_has_its_trainer_and_scorer(name):
    objective = OBJECTIVES[name]
    assert objective.trainer in TRAINERS and objective.scorer in SCORERS
    # Objectives whose models answer prompts have their answers screened: their scorer says what the screen reads.
    assert (SCORERS[objective.scorer].screen_inputs is not None) == objective.answers_prompts
