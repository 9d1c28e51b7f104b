"""A caller's JSON body, parsed once with orjson, refused with a 400 when unusable.

orjson reads up to 1,024 levels of nesting but writes only 254, so a body nested
255-1,024 levels deep parsed and then failed when it was written for Azure (a 500).
Such a body is refused here. Counting brackets first keeps the usual body to two
C-speed scans; only a body with more than `MAX_DEPTH` brackets is walked.
"""

from __future__ import annotations

from typing import Any

import orjson

from app.errors import BadRequest

MAX_DEPTH = 254  # what orjson.dumps accepts


def load_object(body: bytes) -> dict[str, Any]:
    if not body:
        raise BadRequest("Request body is empty: expected a JSON object.")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"Request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("Request body must be a JSON object.")
    if body.count(b"[") + body.count(b"{") > MAX_DEPTH and too_deep(data):
        raise BadRequest(f"Request body is nested more than {MAX_DEPTH} levels deep.")
    return data


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """More than `limit` levels of arrays and objects (the outermost is level 1)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False
