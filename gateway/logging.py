"""Structured logging for the gateway: one line per record, text or JSON, tagged with the session.

Every record carries the id of the session whose task emitted it. The id lives in a
``contextvars.ContextVar`` set by :func:`session_context`; asyncio copies the current context into each
task it creates and ``asyncio.to_thread`` copies it into the worker thread, so a session's child tasks
and its off-loop work are tagged without passing the id around. (``loop.run_in_executor`` does *not*
copy the context; wrap the call in ``contextvars.copy_context().run`` if it must log.)

Transcripts and audio are customer data. They never reach a log line unless the operator asked for it
with ``--log-transcripts``; code that logs them goes through :class:`LogPolicy`.

Text lines look like::

    2024-05-01T12:00:00.123Z INFO gateway.session session=3f2a stream opened codec=pcm16 rate_hz=16000

JSON lines carry ``ts``, ``level``, ``logger``, ``msg``, ``session_id`` (``null`` outside a session),
then the record's ``extra`` fields, then ``exc`` when there is a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Final, TextIO

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "LogPolicy",
    "configure_logging",
    "current_session_id",
    "redact",
    "session_context",
]

LOG_LEVELS: Final[tuple[str, ...]] = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS: Final[tuple[str, ...]] = ("text", "json")

# A ContextVar is the one sanctioned piece of module state here: the object itself never changes, and
# each task sees its own value.
_SESSION_ID: Final[ContextVar[str | None]] = ContextVar("xlgate_session_id", default=None)

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRIBUTES: Final[frozenset[str]] = frozenset(
    logging.LogRecord("", logging.INFO, "", 0, "", (), None).__dict__
) | {"message", "asctime", "taskName", "session_id"}

# Characters that could forge a new log line or corrupt a terminal when a peer's bytes reach a message.
_CONTROL_ESCAPES: Final[Mapping[int, str]] = MappingProxyType(
    {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F) if code != 0x09} | {0x0A: "\\n", 0x0D: "\\r"}
)


@contextmanager
def session_context(session_id: str) -> Iterator[None]:
    """Tag every log record emitted in this context (and in tasks created inside it) with a session id.

    Args:
        session_id: the gateway's id for the session (never a transcript or caller number).
    """
    token = _SESSION_ID.set(session_id)
    try:
        yield
    finally:
        _SESSION_ID.reset(token)


def current_session_id() -> str | None:
    """Return the session id of the current context, or None outside a session."""
    return _SESSION_ID.get()


def redact(text: str) -> str:
    """Replace text with a marker that keeps only its length."""
    return f"<redacted {len(text)} chars>"


@dataclass(frozen=True, slots=True)
class LogPolicy:
    """What customer data may appear in logs. The default logs none of it.

    Attributes:
        log_transcripts: when True (the ``--log-transcripts`` debug flag) transcripts are logged verbatim.
    """

    log_transcripts: bool = False

    def transcript(self, text: str) -> str:
        """Return the transcript if transcript logging is enabled, else a length-only marker."""
        return text if self.log_transcripts else redact(text)

    def audio(self, num_bytes: int) -> str:
        """Describe an audio payload. Audio bytes are never logged, whatever the policy."""
        return f"<audio {num_bytes} bytes>"


class _SessionFilter(logging.Filter):
    """Stamp the current session id on each record, in the thread that emitted it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "session_id"):
            record.session_id = _SESSION_ID.get()
        return True


class _Handler(logging.StreamHandler[TextIO]):
    """Marks the handler configure_logging installed, so a second call replaces it."""


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {key: value for key, value in record.__dict__.items() if key not in _RECORD_ATTRIBUTES}


def _escape(text: str) -> str:
    return text.translate(_CONTROL_ESCAPES)


def _text_value(value: object) -> str:
    text = _escape(str(value))
    if text == "" or any(char in text for char in ' "='):
        return json.dumps(text, ensure_ascii=False)
    return text


class TextFormatter(logging.Formatter):
    """``ts LEVEL logger session=<id|-> message key=value ...``; traceback on the following lines."""

    def format(self, record: logging.LogRecord) -> str:
        session_id = getattr(record, "session_id", None)
        parts = [
            _timestamp(record),
            record.levelname,
            record.name,
            f"session={_text_value(session_id) if session_id is not None else '-'}",
            _escape(record.getMessage()),
        ]
        parts.extend(f"{key}={_text_value(value)}" for key, value in _extras(record).items())
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        elif record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line; values JSON cannot encode are written with ``str()``."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "session_id": getattr(record, "session_id", None),
        }
        for key, value in _extras(record).items():
            payload.setdefault(key, value)
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        elif record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        return json.dumps(payload, ensure_ascii=False, default=str)


def configure_logging(*, level: str, fmt: str, stream: TextIO | None = None) -> None:
    """Send all records at ``level`` and above to ``stream`` as structured lines.

    Calling it again replaces the handler the previous call installed; handlers others added stay.

    Args:
        level: one of LOG_LEVELS, case-insensitive.
        fmt: "text" or "json".
        stream: where lines go; ``sys.stderr`` (looked up at call time) when None.

    Raises:
        ValueError: level or fmt is not one of the accepted names.
    """
    level_name = level.lower()
    if level_name not in LOG_LEVELS:
        raise ValueError(f"log level: expected one of {', '.join(LOG_LEVELS)}, got {level!r}")
    formatter: logging.Formatter
    if fmt == "text":
        formatter = TextFormatter()
    elif fmt == "json":
        formatter = JsonFormatter()
    else:
        raise ValueError(f"log format: expected one of {', '.join(LOG_FORMATS)}, got {fmt!r}")

    handler = _Handler(sys.stderr if stream is None else stream)
    handler.setFormatter(formatter)
    handler.addFilter(_SessionFilter())

    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level_name.upper())
    logging.captureWarnings(True)
