"""The one JSON codec, on both legs: client bodies in and answers out, upstream bodies out and in.

orjson (the ``speed`` extra) when it is installed, about 5x faster for the bodies we handle;
the standard library's ``json`` otherwise, with the same compact output. Either way a document
nested too deep to decode is a ``ValueError``, never a ``RecursionError``; :func:`too_deep`
checks a decoded one against the router's own, lower limit (orjson writes at most 255 levels).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["dumps", "loads", "too_deep"]

try:
    import orjson

    def dumps(value: Any) -> bytes:
        return orjson.dumps(value)

    def loads(data: bytes | str) -> Any:
        return orjson.loads(data)

except ImportError:  # pragma: no cover - exercised where orjson is absent

    def dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()

    def loads(data: bytes | str) -> Any:
        try:
            return json.loads(data)
        except RecursionError:
            raise ValueError("JSON nested too deep to decode") from None


def too_deep(value: Any, limit: int, raw: bytes | None = None) -> tuple[str, ...] | None:
    """The path to the first array or object nested deeper than ``limit`` levels (the document
    itself is level 1), or None. Iterative: no recursion, whatever the depth. With ``raw``, a
    document with no more brackets than ``limit`` is passed without a walk."""
    if raw is not None and raw.count(b"[") + raw.count(b"{") <= limit:
        return None
    if not isinstance(value, dict | list):
        return None
    stack: list[tuple[Any, int, tuple[str, ...]]] = [(value, 1, ())]
    while stack:
        node, depth, path = stack.pop()
        if depth > limit:
            return path
        for key, child in node.items() if isinstance(node, dict) else enumerate(node):
            if isinstance(child, dict | list):
                stack.append((child, depth + 1, (*path, str(key))))
    return None
