"""Logging of our own processes (the CLI, the exporter, the simulator, ``dev``): text for a
terminal, or one JSON object per line for a log pipeline; never a secret either way.

JSON lines carry ``time``, ``level``, ``logger``, ``message`` and whatever a call passes in
``extra`` (``ispb``, ``policy``, ``run_id`` where they apply), so a log pipeline can filter by
participant without parsing messages. Whatever the format, a password in a URL
(``scheme://user:password@host``) or a bearer token is masked before the line is written:
a message built from an error of a database driver or an HTTP client can contain one.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Literal

from pythonjsonlogger.json import JsonFormatter

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]+:)[^@\s]+(?=@)")
_BEARER = re.compile(r"(?i)(?P<head>bearer\s+)[A-Za-z0-9._~+/=-]+")


def mask_secrets(text: str) -> str:
    """``text`` with URL passwords and bearer tokens replaced by ``***``."""
    text = _URL_PASSWORD.sub(r"\g<head>***", text)
    return _BEARER.sub(r"\g<head>***", text)


class SecretMask(logging.Filter):
    """Masks secrets in the formatted message (and drops the arguments, already applied)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_secrets(message)
        if masked != message or record.args:
            record.msg, record.args = masked, None
        return True


class _Json(JsonFormatter):
    """One object per line: time (ISO 8601, UTC), level, logger, message, and the extras."""

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            datefmt="%Y-%m-%dT%H:%M:%S%z",
            json_ensure_ascii=False,
        )


def configure_logging(level: int = logging.INFO, log_format: LogFormat = "text") -> None:
    """Route every log record of the process to stderr in ``log_format``, masked."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Json() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(SecretMask())
    root = logging.getLogger()
    for previous in list(root.handlers):
        root.removeHandler(previous)
    root.addHandler(handler)
    root.setLevel(level)
