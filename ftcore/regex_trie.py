"""One regex for many literal strings, shaped as a prefix tree.

`re.compile("idiot|imbecile|...")` makes Python's regex engine try every alternative at every position; the same
strings as a tree ("i(?:diot|mbecile)") try each position once, about ten times faster on long texts. Used by the
toxicity lexicon and by expand_abbreviations' prefilter.
"""

from __future__ import annotations

import re
from collections.abc import Iterable


def trie_pattern(terms: Iterable[str], gap: str = r"\s+") -> str:
    """A regex (without anchors or flags) that matches exactly the given terms; a space in a term matches `gap`."""
    trie: dict = {}
    for term in terms:
        node = trie
        for char in term:
            node = node.setdefault(char, {})
        node[""] = {}  # a term ends here

    def build(node: dict) -> str:
        branches = [(gap if char == " " else re.escape(char)) + build(child)
                    for char, child in sorted(node.items()) if char]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if "" in node else body

    return build(trie)
