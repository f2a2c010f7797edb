"""Our wording of configuration problems: paths, ``(got ...)`` and pydantic's error kinds.

A secret field's value is never repeated; other values are shown cut to 40 characters.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from .fields import _SECRET_FIELDS

__all__ = ["dotted", "got", "message"]


def dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def got(value: object) -> str:
    if isinstance(value, bool):
        return f" (got {'true' if value else 'false'})"
    if isinstance(value, int | float):
        return f" (got {value!r})"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f" (got {shown!r})"
    if isinstance(value, Mapping):
        return " (got a table)"
    if isinstance(value, list | tuple):
        return " (got a list)"
    return " (got another type)"


def message(error: Mapping[str, Any], keys: tuple[str, ...]) -> str:
    """Our own wording for a pydantic error, never echoing a secret field's value."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    loc = tuple(error["loc"])
    secret = any(part in _SECRET_FIELDS for part in loc)
    shown = "" if secret or "input" not in error else got(error["input"])
    if kind == "extra_forbidden":
        key = str(loc[-1]) if loc else ""
        close = difflib.get_close_matches(key.lower(), keys, n=1, cutoff=0.75)
        return "unknown key" + (f"; did you mean {close[0]!r}?" if close else "")
    simple = {
        "missing": "is required",
        "int_type": "must be a whole number",
        "int_parsing": "must be a whole number",
        "int_from_float": "must be a whole number",
        "float_type": "must be a number",
        "float_parsing": "must be a number",
        "finite_number": "must be a finite number",
        "bool_type": "must be true or false",
        "bool_parsing": "must be true or false",
        "string_type": "must be a string",
        "list_type": "must be a list of strings",
        "tuple_type": "must be a list of strings",
        "dict_type": "must be a table",
        "model_type": "must be a table",
        "string_too_short": "must not be empty",
    }
    if kind in simple:
        return simple[kind] + shown
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<="}.get(
            kind, "<"
        )
        limit = next(iter(ctx.values()), "?")
        if isinstance(limit, float) and limit.is_integer():
            limit = int(limit)
        return f"must be {op} {limit}{shown}"
    if kind in ("literal_error", "enum"):
        return f"must be one of {ctx.get('expected', '?')}{shown}"
    # Our own PydanticCustomErrors carry finished messages without values; pydantic's other
    # messages do not repeat the input either.
    return str(error["msg"]).removeprefix("Value error, ")
