"""What went wrong in a configuration file, said in plain words.

PyYAML and pydantic describe problems in their own terms (`expected <block
end>, but found '?'`, `Input should be a valid string`, `String should match
pattern '^[0-9a-fA-F]{64}$'`). The functions here turn each into a sentence
that names the place and says what to write instead, including the usual YAML
traps: an unquoted date or number read as something other than text, a tab
in the indentation, a list where a mapping belongs. Pure functions, no I/O;
`app.config` calls them and raises one `ConfigError` with every line.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml

Loc = tuple[str | int, ...]


def format_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


# --- YAML syntax ----------------------------------------------------------------------

# PyYAML's problem text (start of it) -> what it means to someone editing the file.
_YAML_PROBLEMS = (
    (
        "found character '\\t'",
        "a tab character; YAML indents with spaces only (replace the tab with spaces)",
    ),
    (
        "expected <block end>",
        "the indentation does not line up: this line is indented differently from the "
        "lines of the same block above it",
    ),
    (
        "mapping values are not allowed",
        "a ':' where a value was expected; put quotes around a value that contains ': '",
    ),
    (
        "could not find expected ':'",
        "a line that is not 'name: value' (a ':' is missing, or a quote is not closed)",
    ),
    ("expected ',' or ']'", "a '[' list that is not closed with ']'"),
    ("expected ',' or '}'", "a '{' mapping that is not closed with '}'"),
    ("found unexpected end of stream", "a quoted value that is not closed"),
    ("found undefined alias", "an '*alias' with no '&anchor' of that name above it"),
    (
        "found character '%'",
        "a value starting with '%'; put it in quotes",
    ),
    (
        "found character '@'",
        "a value starting with '@'; put it in quotes",
    ),
    (
        "found character '`'",
        "a value starting with '`'; put it in quotes",
    ),
)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """`not valid YAML at line L, column C: <what it means>`."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = str(getattr(exc, "problem", None) or exc)
    for start, plain in _YAML_PROBLEMS:
        if problem.startswith(start):
            problem = plain
            break
    else:
        problem = problem.replace("<block mapping start>", "a new 'name: value' block")
    return f"not valid YAML{where}: {problem}"


def tab_lines(text: str) -> list[str]:
    """One problem per line indented with a tab (YAML refuses them, often far away)."""
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        indent = line[: len(line) - len(line.lstrip(" \t"))]
        if "\t" in indent:
            out.append(
                f"line {number}: indented with a tab; YAML indents with spaces only "
                "(replace the tab with spaces)"
            )
    return out


# --- validation -----------------------------------------------------------------------

_KIND = {
    bool: "true/false",
    int: "a number",
    float: "a number",
    dt.date: "a date",
    dt.datetime: "a date and time",
}


def _yaml_kind(value: Any) -> str | None:
    for kind, name in _KIND.items():
        if type(value) is kind:
            return name
    return None


def _as_written(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def _found(value: Any) -> str:
    if isinstance(value, list):
        return "a list (lines starting with '-')"
    if isinstance(value, dict):
        return "a mapping (name: value lines)"
    if value is None:
        return "nothing"
    return f"'{_as_written(value)}'"


def _not_text(err: Mapping[str, Any]) -> str:
    value = err.get("input")
    kind = _yaml_kind(value)
    if kind is not None:
        written = _as_written(value)
        return f'YAML read {written} as {kind}, not text; put it in quotes: "{written}"' + (
            " (a number with a leading 0 loses it)" if type(value) is int else ""
        )
    return f"must be text, found {_found(value)}"


def _mapping(err: Mapping[str, Any]) -> str:
    value = err.get("input")
    if isinstance(value, list):
        return (
            "must be a mapping (name: value lines), found a list (lines starting with '-'); "
            "remove the '- '"
        )
    return f"must be a mapping (name: value lines), found {_found(value)}"


def _sequence(err: Mapping[str, Any]) -> str:
    value = err.get("input")
    if isinstance(value, dict):
        return "must be a list (lines starting with '- ', or [a, b]), found a mapping"
    return f"must be a list (lines starting with '- ', or [a, b]), found {_found(value)}"


def _pattern(err: Mapping[str, Any], loc: Loc) -> str:
    if loc and loc[-1] == "key_sha256":
        return "must be 64 hex characters, the output of `aoai-gateway hash-key`"
    return f"'{_as_written(err.get('input'))}' is not in the expected form"


def _limit(err: Mapping[str, Any]) -> str:
    ctx = err.get("ctx") or {}
    words = {"gt": "greater than", "ge": "at least", "lt": "less than", "le": "at most"}
    for k, w in words.items():
        if k in ctx:
            return f"must be {w} {ctx[k]}, found {_found(err.get('input'))}"
    return str(err["msg"])


_BY_TYPE: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "string_type": _not_text,
    "dict_type": _mapping,
    "model_type": _mapping,
    "model_attributes_type": _mapping,
    "tuple_type": _sequence,
    "list_type": _sequence,
    "int_parsing": lambda e: f"must be a whole number, found {_found(e.get('input'))}",
    "int_type": lambda e: f"must be a whole number, found {_found(e.get('input'))}",
    "int_from_float": lambda e: f"must be a whole number, found {_found(e.get('input'))}",
    "float_parsing": lambda e: f"must be a number, found {_found(e.get('input'))}",
    "float_type": lambda e: f"must be a number, found {_found(e.get('input'))}",
    "bool_parsing": lambda e: f"must be true or false, found {_found(e.get('input'))}",
    "bool_type": lambda e: f"must be true or false, found {_found(e.get('input'))}",
    "greater_than": _limit,
    "greater_than_equal": _limit,
    "less_than": _limit,
    "less_than_equal": _limit,
    "extra_forbidden": lambda e: "unknown key (check the spelling)",
    "missing": lambda e: "is required",
    "too_short": lambda e: "needs at least one item",
    "value_error": lambda e: str(e["msg"]).removeprefix("Value error, "),
}


def pydantic_problems(errors: Sequence[Mapping[str, Any]]) -> list[str]:
    """One plain line per pydantic error, each with its place in the file."""
    out = []
    places = []
    for err in errors:
        # Drop pydantic's internal steps (function-before[...]) from the location.
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p and "(" in p))
        places.append(loc)
        kind = err["type"]
        if kind == "string_pattern_mismatch":
            msg = _pattern(err, loc)
        elif kind == "literal_error":
            expected = (err.get("ctx") or {}).get("expected", "")
            msg = f"must be {expected}, found {_found(err.get('input'))}"
        else:
            handler = _BY_TYPE.get(kind)
            msg = handler(err) if handler else str(err["msg"]).replace("Input should be", "must be")
        out.append((loc, kind, f"{format_loc(loc)}: {msg}"))
    # `keys: needs at least one item` after `keys[0]: ...` says nothing new.
    return [
        line
        for loc, kind, line in out
        if not (kind == "too_short" and any(p[: len(loc)] == loc and p != loc for p in places))
    ]
