"""Logging of our own processes (the CLI, the exporter, the simulator, ``dev``): text for a
terminal, or one JSON object per line for a log pipeline; never a secret either way.

JSON lines carry ``time``, ``level``, ``logger``, ``message`` and whatever a call passes in
``extra`` (``ispb``, ``policy``, ``run_id`` where they apply), so a log pipeline can filter by
participant without parsing messages. Whatever the format, a password in a URL
(``scheme://user:password@host``) or a bearer token is masked in the finished line (message,
extras and traceback) before it is written: an error of a database driver or an HTTP client
can contain one. Times are UTC.
"""

from __future__ import annotations

import logging
import re
import sys
import time
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


class _MaskedText(logging.Formatter):
    """The text format, with secrets masked in the whole line (traceback included)."""

    def format(self, record: logging.LogRecord) -> str:
        return mask_secrets(super().format(record))


class _Json(JsonFormatter):
    """One object per line: time (ISO 8601, UTC), level, logger, message, the extras and any
    traceback; secrets masked in the whole line."""

    converter = time.gmtime  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            datefmt="%Y-%m-%dT%H:%M:%SZ",
            json_ensure_ascii=False,
        )

    def format(self, record: logging.LogRecord) -> str:
        return mask_secrets(super().format(record))


def configure_logging(level: int = logging.INFO, log_format: LogFormat = "text") -> None:
    """Route every log record of the process to stderr in ``log_format``, masked."""
    handler = logging.StreamHandler(sys.stderr)
    text = _MaskedText(TEXT_FORMAT)
    text.converter = time.gmtime  # type: ignore[assignment]
    handler.setFormatter(_Json() if log_format == "json" else text)
    root = logging.getLogger()
    for previous in list(root.handlers):
        root.removeHandler(previous)
    root.addHandler(handler)
    root.setLevel(level)
