r"""Milvus boolean expressions built from user values: metadata filters and id lists. Every value is written as a
JSON literal, so no user text is read as expression syntax.

Example::

    >>> from service.milvus_expr import quote
    >>> quote(["a", 'b"c'])
    '["a", "b\\"c"]'
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from .errors import Unprocessable


def quote(values: Sequence[str]) -> str:
    """A Milvus list literal of strings."""
    return "[" + ", ".join(json.dumps(v, ensure_ascii=False) for v in values) + "]"


def milvus_filter(where: Mapping[str, object]) -> str | None:
    """The Milvus boolean expression of a metadata filter; ``None`` when it can match nothing.

    >>> milvus_filter({"lang": "tr", "n": [1, 2]})
    '(metadata["lang"] == "tr" or json_contains_any(metadata["lang"], ["tr"])) and (metadata["n"] == 1 or \
metadata["n"] == 2 or json_contains_any(metadata["n"], [1, 2]))'
    """
    clauses = []
    for key, wanted in where.items():
        values = wanted if isinstance(wanted, list) else [wanted]
        if not values:
            return None
        if any(v is None for v in values):
            raise Unprocessable(f"filter.{key}: null values cannot be matched with --index milvus")
        field = f"metadata[{json.dumps(key, ensure_ascii=False)}]"
        literals = [json.dumps(v, ensure_ascii=False) for v in values]
        equal = " or ".join(f"{field} == {literal}" for literal in literals)
        clauses.append(f"({equal} or json_contains_any({field}, [{', '.join(literals)}]))")
    return " and ".join(clauses)
