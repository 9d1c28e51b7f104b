"""`--env-file PATH`: the `KEY=VALUE` file Docker's `--env-file` reads, for a checkout too.

One variable per line, `#` starts a comment line, blank lines are skipped; an
optional `export ` in front and matching quotes around the value are allowed
(what a shell script or docker compose would accept). Variables already set
in the environment win, so a one-off `EASTUS_KEY1=... aoai-gateway serve`
still overrides the file. Values are never printed.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from pathlib import Path

from app.config import ConfigError, read_text

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_env(text: str, source: str) -> dict[str, str]:
    """The variables of one file; every malformed line is reported at once."""
    out: dict[str, str] = {}
    errors = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").lstrip()
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not _NAME.match(name):
            errors.append(f"line {number}: expected NAME=VALUE (a variable name, then '=')")
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[name] = value
    if errors:
        raise ConfigError(errors, source)
    return out


def load_env_file(path: Path, environ: MutableMapping[str, str]) -> list[str]:
    """Set the file's variables that `environ` does not already have; their names."""
    added = []
    for name, value in parse_env(read_text(path), str(path)).items():
        if name not in environ:
            environ[name] = value
            added.append(name)
    return added
