"""Structured log lines, session tagging through contextvars, and transcript redaction."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from gateway.logging import (
    LogPolicy,
    configure_logging,
    current_session_id,
    redact,
    session_context,
)

TEXT_LINE = re.compile(
    r"^(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (?P<level>[A-Z]+) (?P<logger>\S+) "
    r"session=(?P<session>\S+) (?P<rest>.*)$"
)


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


def capture(fmt: str, level: str = "debug") -> io.StringIO:
    stream = io.StringIO()
    configure_logging(level=level, fmt=fmt, stream=stream)
    return stream


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_parse_with_core_and_extra_fields() -> None:
    stream = capture("json")
    log = logging.getLogger("gateway.test")
    log.info("stream opened for %s", "pcm16", extra={"rate_hz": 16000, "codec": "pcm16"})
    log.warning("odd value", extra={"obj": object()})
    first, second = json_lines(stream)
    assert first["level"] == "info"
    assert first["logger"] == "gateway.test"
    assert first["msg"] == "stream opened for pcm16"
    assert first["session_id"] is None
    assert (first["rate_hz"], first["codec"]) == (16000, "pcm16")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(first["ts"]))
    assert second["level"] == "warning" and str(second["obj"]).startswith("<object object")


def test_json_exception_is_one_line() -> None:
    stream = capture("json")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("gateway.test").exception("failed")
    (line,) = json_lines(stream)
    assert "RuntimeError: boom" in str(line["exc"])


def test_text_line_shape() -> None:
    stream = capture("text")
    logging.getLogger("gateway.test").info("stream opened", extra={"codec": "pcm16", "note": "two words"})
    (line,) = stream.getvalue().splitlines()
    match = TEXT_LINE.match(line)
    assert match, line
    assert (match["level"], match["logger"], match["session"]) == ("INFO", "gateway.test", "-")
    assert match["rest"] == 'stream opened codec=pcm16 note="two words"'


def test_text_escapes_line_breaks_so_a_peer_cannot_forge_lines() -> None:
    stream = capture("text")
    logging.getLogger("gateway.test").warning("bad header %r", "x\nFAKE", extra={"value": "a\r\nb"})
    assert len(stream.getvalue().splitlines()) == 1


def test_text_exception_follows_the_line() -> None:
    stream = capture("text")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("gateway.test").exception("failed")
    first, *rest = stream.getvalue().splitlines()
    assert first.endswith("failed") and "RuntimeError: boom" in rest[-1]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_session_id_inside_and_outside_a_context(fmt: str) -> None:
    stream = capture(fmt)
    log = logging.getLogger("gateway.test")
    log.info("before")
    with session_context("s-1"):
        assert current_session_id() == "s-1"
        log.info("inside")
        with session_context("s-2"):
            log.info("nested")
        log.info("inside again")
    log.info("after")
    assert current_session_id() is None
    if fmt == "json":
        sessions = [line["session_id"] for line in json_lines(stream)]
        assert sessions == [None, "s-1", "s-2", "s-1", None]
    else:
        sessions = [TEXT_LINE.match(line)["session"] for line in stream.getvalue().splitlines()]  # type: ignore[index]
        assert sessions == ["-", "s-1", "s-2", "s-1", "-"]


def test_session_id_travels_into_tasks_and_threads() -> None:
    stream = capture("json")
    log = logging.getLogger("gateway.test")

    async def child(tag: str) -> None:
        await asyncio.sleep(0)
        log.info(tag)

    async def session(session_id: str) -> None:
        with session_context(session_id):
            async with asyncio.TaskGroup() as group:
                group.create_task(child(f"{session_id}:task"))
                group.create_task(child(f"{session_id}:task2"))
            await asyncio.to_thread(log.info, f"{session_id}:thread")
            await asyncio.sleep(0)
            log.info(f"{session_id}:self")

    async def main() -> None:
        async with asyncio.TaskGroup() as group:
            for session_id in ("a", "b", "c"):
                group.create_task(session(session_id))
        log.info("outside")

    asyncio.run(main())
    lines = [line for line in json_lines(stream) if line["logger"] == "gateway.test"]
    assert len(lines) == 13
    for line in lines:
        msg = str(line["msg"])
        expected = None if msg == "outside" else msg.split(":")[0]
        assert line["session_id"] == expected, line


def test_explicit_session_id_in_extra_wins() -> None:
    stream = capture("json")
    with session_context("ctx"):
        logging.getLogger("gateway.test").info("x", extra={"session_id": "explicit"})
    assert json_lines(stream)[0]["session_id"] == "explicit"


def test_level_filters_and_reconfiguring_replaces_the_handler() -> None:
    first = capture("text", level="info")
    logging.getLogger("gateway.test").debug("hidden")
    second = capture("json", level="WARNING")
    log = logging.getLogger("gateway.test")
    log.info("hidden too")
    log.error("shown")
    assert first.getvalue() == ""
    assert [line["msg"] for line in json_lines(second)] == ["shown"]


@pytest.mark.parametrize(
    ("level", "fmt", "message"),
    [
        ("verbose", "text", "log level: expected one of debug, info, warning, error, critical, got 'verbose'"),
        ("info", "xml", "log format: expected one of text, json, got 'xml'"),
    ],
)
def test_configure_logging_rejects_bad_names(level: str, fmt: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        configure_logging(level=level, fmt=fmt, stream=io.StringIO())
    assert str(caught.value) == message


def test_transcripts_are_redacted_by_default() -> None:
    assert LogPolicy().transcript("my card number is 4111") == "<redacted 22 chars>"
    assert LogPolicy(log_transcripts=False).transcript("") == "<redacted 0 chars>"
    assert redact("héllo") == "<redacted 5 chars>"


def test_transcripts_logged_only_when_enabled() -> None:
    assert LogPolicy(log_transcripts=True).transcript("my card number") == "my card number"


def test_audio_is_never_logged() -> None:
    for policy in (LogPolicy(), LogPolicy(log_transcripts=True)):
        assert policy.audio(3200) == "<audio 3200 bytes>"
