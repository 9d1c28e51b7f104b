"""The gateway's own log lines (stderr), in one format with uvicorn's: text or JSON.

`--log-format text|json` (default: text when stderr is a terminal, JSON
otherwise) applies to the `aoai_gateway` logger and to uvicorn's own lines,
and `app.accesslog` writes the access log (stdout) in the same format. The
setup is a `logging.config.dictConfig` dictionary handed to uvicorn as its
`log_config`, so every worker of `--workers N` configures itself the same way
(before, a worker's INFO lines were lost and its warnings went out through
Python's last-resort handler, without time or level).

    text: 2026-12-01T22:53:00.123Z WARNING configuration reloaded: 3 models
    json: {"time":"2026-12-01T22:53:00.123Z","level":"WARNING","logger":"aoai_gateway",
           "message":"configuration reloaded: 3 models"}
"""

from __future__ import annotations

import logging
import logging.config
from typing import Any, Literal, TextIO

import orjson

from app.accesslog import rfc3339

Format = Literal["text", "json"]
ENV_FORMAT = "AOAI_GATEWAY_LOG_FORMAT"


def choose_format(given: str | None, stderr: TextIO) -> Format:
    """`--log-format`, else text for a person at a terminal, JSON for a collector."""
    if given in ("text", "json"):
        return "json" if given == "json" else "text"
    try:
        return "text" if stderr.isatty() else "json"
    except (AttributeError, ValueError):
        return "json"


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{rfc3339(record.created)} {record.levelname} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": rfc3339(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def log_config(fmt: Format, level: str) -> dict[str, Any]:
    """dictConfig for the gateway's logger and uvicorn's (its access log stays off)."""
    formatter = "app.logs.JsonFormatter" if fmt == "json" else "app.logs.TextFormatter"
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "gateway",
        "stream": "ext://sys.stderr",
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"gateway": {"()": formatter}},
        "handlers": {"stderr": handler},
        "loggers": {
            "aoai_gateway": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn.error": {"level": level.upper()},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }


def setup(fmt: Format, level: str) -> None:
    logging.config.dictConfig(log_config(fmt, level))
