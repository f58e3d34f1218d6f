"""Structured logging: JSON lines when stdout is not a terminal, console output when it is.

Event names are stable dotted words (``mqtt.connect.rejected``); context such as
``conn_id``, ``protocol``, ``peer`` and ``client_id`` is bound once per
connection. Payloads and secrets are never logged.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import msgspec
import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_encoder = msgspec.json.Encoder()


def _json(event: dict[str, Any], **_: Any) -> str:
    return _encoder.encode(event).decode()


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    stream = sys.stdout if stream is None else stream
    console = fmt == "console" or (fmt == "auto" and stream.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if console
        else structlog.processors.JSONRenderer(serializer=_json)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *(() if console else (structlog.processors.format_exc_info,)),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


def get_logger(**context: Any) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger()
    return logger.bind(**context) if context else logger
