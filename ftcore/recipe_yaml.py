"""Reading a recipe's YAML: what YAML allows but a recipe never means is refused while parsing, with its line.

- A key given twice: YAML keeps the last silently, so a recipe that sets `train:` twice would run half of what
  its author wrote.
- Nesting deeper than MAX_DEPTH: PyYAML composes recursively, so 5,000 levels end in a RecursionError.
- Anchors and aliases that expand into more than MAX_VALUES values (a "billion laughs"), or refer to themselves:
  PyYAML shares the aliased node, but validation, hashing and the MLflow params walk the expanded tree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

MAX_DEPTH = 64  # a recipe nests about 6 levels; plugin parameters add a few
MAX_VALUES = 100_000  # a recipe holds a few hundred values


class Refused(yaml.MarkedYAMLError):
    """YAML that parses but cannot be a recipe (a duplicate key, too deep, too large)."""


class RecipeLoader(yaml.SafeLoader):
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise Refused(problem=f"nested deeper than {MAX_DEPTH} levels",
                              problem_mark=self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self) -> Node | None:
        node = super().get_single_node()
        if node is not None:
            _expanded_size(node, {}, set())
        return node

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` merges keys that may then be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # an unhashable key: SafeLoader's own error names it
                continue
            if first is not key_node:
                raise Refused(problem=f"duplicate key {key!r} (first given on line {first.start_mark.line + 1}); "
                                      "YAML would keep only the last: give each key once",
                              problem_mark=key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: Node, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """How many values `node` stands for once its aliases are expanded (each shared node counted once per use)."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_nodes:
        raise Refused(problem="an alias refers to the node that contains it (a recursive structure)",
                      problem_mark=node.start_mark)
    open_nodes.add(id(node))
    children = [n for pair in node.value for n in pair] if isinstance(node, MappingNode) else (
        node.value if isinstance(node, SequenceNode) else [])
    size = 1 + sum(_expanded_size(child, sizes, open_nodes) for child in children)
    open_nodes.discard(id(node))
    if size > MAX_VALUES:
        raise Refused(problem=f"expands to more than {MAX_VALUES:,} values (anchors and aliases repeat what they "
                              "refer to)", problem_mark=node.start_mark)
    sizes[id(node)] = size
    return size


def parse_yaml(text: str) -> Any:
    """`text` as recipe YAML; yaml.YAMLError (Refused for the recipe's own rules) when it is not."""
    return yaml.load(text, Loader=RecipeLoader)


def read_yaml_file(path: Path) -> Any:
    """A recipe's (or another settings file's: serving, deployments) YAML; ValueError with one line `line N: what
    is wrong (and the fix)` when it cannot be read by the recipe's rules."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ValueError(f"line {line}: not UTF-8 (byte 0x{data[e.start]:02x}); save the recipe as UTF-8") from None
    try:
        return parse_yaml(text)
    except yaml.YAMLError as e:
        raise ValueError(describe_yaml_error(e, text)) from None


def describe_yaml_error(error: yaml.YAMLError, text: str) -> str:
    """A PyYAML error in one line: where, what, and for tabs the fix."""
    if isinstance(error, yaml.reader.ReaderError):  # a control character YAML does not allow
        line = text[: error.position].count("\n") + 1
        return f"line {line}: not valid YAML: character {chr(error.character)!r} is not allowed in YAML text"
    mark = getattr(error, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    if isinstance(error, Refused):
        return f"{where}{error.problem}"
    what = " ".join(part for part in (getattr(error, "context", None), getattr(error, "problem", None)) if part)
    hint = " (YAML indents with spaces, not tabs)" if "'\\t'" in what else ""
    return f"{where}not valid YAML: {what or error}{hint}"
