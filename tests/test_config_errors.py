"""app/config_errors.py: the YAML traps and schema errors, said in plain words, all at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import ConfigError, parse


def errors_of(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text, environ or {})
    return info.value.errors


RES = "resources:\n  a:\n    endpoint: https://a.openai.azure.com\n    keys: [k]\n"


def test_an_unquoted_date_is_named_with_the_fix() -> None:
    text = RES + "    api: legacy\n    api_version: 2024-10-21\n"
    assert errors_of(text) == [
        "resources.a.api_version: YAML read 2024-10-21 as a date, not text; "
        'put it in quotes: "2024-10-21"'
    ]


def test_unquoted_numbers_and_booleans_are_named() -> None:
    text = (
        "resources:\n  a:\n    endpoint: https://a\n    keys: [12345, yes]\n"
        "models:\n  m: [{resource: a, deployment: 4}]\n"
    )
    errors = errors_of(text)
    assert errors[0].startswith("resources.a.keys[0]: YAML read 12345 as a number, not text;")
    assert 'put it in quotes: "12345"' in errors[0]
    assert errors[1].startswith("resources.a.keys[1]: YAML read true as true/false, not text;")
    assert errors[2].startswith("models.m[0].deployment: YAML read 4 as a number")
    assert not any("needs at least one item" in e for e in errors)


def test_tabs_are_named_by_line() -> None:
    assert errors_of("resources:\n\ta:\n    endpoint: https://a\n") == [
        "line 2: indented with a tab; YAML indents with spaces only (replace the tab with spaces)"
    ]


def test_a_list_where_a_mapping_belongs() -> None:
    text = "resources:\n  - eastus:\n      endpoint: https://a\n      keys: [k]\n"
    assert errors_of(text) == [
        "resources: must be a mapping (name: value lines), found a list "
        "(lines starting with '-'); remove the '- '"
    ]


def test_yaml_syntax_errors_in_plain_words_with_line_and_column() -> None:
    (line,) = errors_of("gateway:\n  keys:\n    - name: a\n   key: b\n")
    assert line.startswith("not valid YAML at line 4, column 4: the indentation does not line up")
    assert "<block" not in line
    (line,) = errors_of("models:\n  m: [a/b, c/d\n")
    assert line == "not valid YAML at line 3, column 1: a '[' list that is not closed with ']'"
    (line,) = errors_of(RES + "  x: a: b\n")
    assert "put quotes around a value that contains ': '" in line


def test_pattern_and_type_messages_are_rewritten() -> None:
    text = (
        RES
        + "gateway:\n  keys:\n    - {name: a, key_sha256: abc}\nrouting:\n  max_attempts: many\n"
    )
    assert errors_of(text) == [
        "gateway.keys[0].key_sha256: must be 64 hex characters, the output of "
        "`aoai-gateway hash-key`",
        "routing.max_attempts: must be a whole number, found 'many'",
    ]
    assert errors_of(RES.replace("[k]", "[k]\n    api: v2")) == [
        "resources.a.api: must be 'v1' or 'legacy', found 'v2'"
    ]


def test_every_problem_is_reported_at_once_each_with_its_path() -> None:
    text = (
        "gateway:\n  keys:\n    - {name: a, key: '${NOPE}'}\n"
        "resources:\n  a:\n    endpoint: https://a\n    keys: [k]\n    api: v2\n"
        "models:\n  m: [westus/x]\nrouting: {cooldown: -1}\n"
    )
    assert errors_of(text) == [
        "NOPE is not set (gateway.keys[0].key)",
        "resources.a.api: must be 'v1' or 'legacy', found 'v2'",
        "routing.cooldown: must be at least 0.0, found '-1'",
        "models.m[0].resource: unknown resource 'westus'",
    ]


def test_check_reports_every_trap_at_once_in_plain_words(tmp_path: Path) -> None:
    from tests.test_cli import run

    path = tmp_path / "gateway.yaml"
    path.write_text(
        "resources:\n  sweden:\n    endpoint: https://s.openai.azure.com\n    keys: [0123]\n"
        "    api: legacy\n    api_version: 2024-10-21\n"
        "models:\n  gpt-4o:\n    eastus: gpt-4o\n"
        "gateway:\n  keys:\n    - {name: a, key_sha256: not-hex}\n"
    )
    result = run("check", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"invalid configuration ({path}):",
        "  - gateway.keys[0].key_sha256: must be 64 hex characters, the output of "
        "`aoai-gateway hash-key`",
        "  - resources.sweden.keys[0]: YAML read 83 as a number, not text; put it in quotes: "
        '"83" (a number with a leading 0 loses it)',
        "  - resources.sweden.api_version: YAML read 2024-10-21 as a date, not text; put it in "
        'quotes: "2024-10-21"',
        "  - models.gpt-4o: must be a list (lines starting with '- ', or [a, b]), found a mapping",
    ]
    path.write_text("resources:\n  sweden:\n\tendpoint: https://s\n")
    tabs = run("check", "--config", str(path), cwd=tmp_path)
    assert tabs.returncode == 2 and "line 3: indented with a tab" in tabs.stderr
    assert "Traceback" not in result.stderr + tabs.stderr
