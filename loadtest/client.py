"""The streams of one client process: real-time paced WebSocket (or gRPC, or MRCP) sessions and what they measure.

Theory of operation: every stream owns a list of utterances (files). Each utterance is one session:
connect, ``start``, wait for ``ready``, send 20 ms frames on an absolute schedule taken from one
monotonic start (frame ``i`` is due at ``t_start + i * frame_s``; a late frame never shifts the next one),
``stop``, wait for ``end``. A receiver task runs beside the sender. Every result carries ``audio_end_ms``;
its latency is its receive time minus the send time of the frame holding that instant, taken from the
per-session array of send times. A result that claims audio not sent yet is an over-run (a server bug):
it is counted, an example is kept, and it gives no latency.

All loops are bounded: frames by the file, sessions by the deadline or one pass and ``MAX_SESSIONS``,
messages per session by ``MAX_MESSAGES_PER_SESSION``, waits by explicit timeouts, and the whole process
by a budget after which everything is cancelled.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from loadtest.audio import FRAME_S, Utterance

MAX_MESSAGES_PER_SESSION = 100_000
MAX_SESSIONS_PER_STREAM = 10_000
MAX_OVERRUN_EXAMPLES = 10
MAX_RETRY_AFTER_S = 5.0
ERROR_BACKOFF_S = 1.0
STAGGER_S = 1.0
# Slack for a server that rounds ``audio_end_ms`` up to a whole millisecond.
OVERRUN_TOLERANCE_S = 0.001


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """What every stream needs to know; picklable so it can cross to a worker process."""

    url: str
    sample_rate_hz: int = 8000
    encoding: str = "pcm_s16le"
    interim_results: bool = True
    duration_s: float | None = None
    frame_s: float = FRAME_S
    stagger_s: float = STAGGER_S
    open_timeout_s: float = 5.0
    ready_timeout_s: float = 5.0
    stop_timeout_s: float = 10.0
    close_timeout_s: float = 2.0
    token: str | None = field(default=None, repr=False)  # bearer token: Authorization header / metadata


@dataclass(slots=True)
class Tally:
    """Everything one process measured. Plain lists and counters so it pickles and merges cheaply."""

    partial_latency_s: list[float] = field(default_factory=list)
    final_latency_s: list[float] = field(default_factory=list)
    stop_latency_s: list[float] = field(default_factory=list)
    send_lag_s: list[float] = field(default_factory=list)
    start_of_input_latency_s: list[float] = field(default_factory=list)  # MRCP only (loadtest.mrcp)
    complete_latency_s: list[float] = field(default_factory=list)  # MRCP only (loadtest.mrcp)
    errors: Counter[str] = field(default_factory=Counter)
    rejections: Counter[str] = field(default_factory=Counter)
    counts: Counter[str] = field(default_factory=Counter)
    hypotheses: list[tuple[str, str]] = field(default_factory=list)
    overrun_examples: list[dict[str, Any]] = field(default_factory=list)
    audio_sent_s: float = 0.0
    client_cpu_s: float = 0.0
    wall_s: float = 0.0

    def merge(self, other: Tally) -> None:
        """Add ``other`` into this tally (CPU and audio add up; wall is the longest)."""
        self.partial_latency_s.extend(other.partial_latency_s)
        self.final_latency_s.extend(other.final_latency_s)
        self.stop_latency_s.extend(other.stop_latency_s)
        self.send_lag_s.extend(other.send_lag_s)
        self.start_of_input_latency_s.extend(other.start_of_input_latency_s)
        self.complete_latency_s.extend(other.complete_latency_s)
        self.errors.update(other.errors)
        self.rejections.update(other.rejections)
        self.counts.update(other.counts)
        self.hypotheses.extend(other.hypotheses)
        room = MAX_OVERRUN_EXAMPLES - len(self.overrun_examples)
        self.overrun_examples.extend(other.overrun_examples[: max(room, 0)])
        self.audio_sent_s += other.audio_sent_s
        self.client_cpu_s += other.client_cpu_s
        self.wall_s = max(self.wall_s, other.wall_s)


@dataclass(slots=True)
class _Session:
    utterance: Utterance
    send_times: np.ndarray
    frames_sent: int = 0
    stop_at: float | None = None
    end_at: float | None = None
    texts: list[str] = field(default_factory=list)
    failed: bool = False
    truncated: bool = False


def plan_files(stream_index: int, *, num_streams: int, num_files: int, one_pass: bool) -> list[int] | None:
    """Which files a stream sends in one-pass mode, or ``None`` to cycle until the deadline.

    In one-pass mode the files are dealt out like cards (stream ``i`` gets ``i, i + N, i + 2N, ...``),
    so one stream sends every file and N >= files streams send one file each.
    """
    if not one_pass:
        return None
    return [j % num_files for j in range(stream_index, max(num_files, num_streams), num_streams)]


def _result_latency(sess: _Session, msg: dict[str, Any], now: float, tally: Tally) -> float | None:
    audio_end_ms = msg.get("audio_end_ms")
    if not isinstance(audio_end_ms, int | float) or isinstance(audio_end_ms, bool):
        tally.errors["client.missing_audio_end_ms"] += 1
        return None
    audio_end_s = float(audio_end_ms) / 1000.0
    ends = sess.utterance.frame_end_s
    sent_s = ends[sess.frames_sent - 1] if sess.frames_sent else 0.0
    if audio_end_s > sent_s + OVERRUN_TOLERANCE_S:
        tally.counts["overruns"] += 1
        if len(tally.overrun_examples) < MAX_OVERRUN_EXAMPLES:
            tally.overrun_examples.append({
                "file_id": sess.utterance.file_id,
                "type": msg.get("type"),
                "audio_end_ms": audio_end_ms,
                "audio_sent_ms": round(sent_s * 1000.0, 3),
            })
        return None
    if sess.frames_sent == 0:
        return None
    idx = min(bisect.bisect_left(ends, audio_end_s - 1e-9), sess.frames_sent - 1)
    return now - float(sess.send_times[idx])


async def _receive(ws: ClientConnection, sess: _Session, tally: Tally) -> None:
    """Read results until ``end`` or close; record latencies, texts, errors."""
    received = 0
    try:
        async for message in ws:
            now = time.monotonic()
            received += 1
            if received > MAX_MESSAGES_PER_SESSION:
                tally.errors["client.too_many_messages"] += 1
                sess.failed = True
                return
            if isinstance(message, bytes):
                tally.errors["client.unexpected_binary"] += 1
                continue
            try:
                msg = json.loads(message)
            except ValueError:
                tally.errors["client.bad_json"] += 1
                sess.failed = True
                continue
            kind = msg.get("type") if isinstance(msg, dict) else None
            if kind == "partial":
                tally.counts["partials"] += 1
                latency = _result_latency(sess, msg, now, tally)
                if latency is not None:
                    tally.partial_latency_s.append(latency)
            elif kind == "final":
                tally.counts["finals"] += 1
                latency = _result_latency(sess, msg, now, tally)
                if latency is not None:
                    tally.final_latency_s.append(latency)
                text = msg.get("text")
                if isinstance(text, str) and text.strip():
                    sess.texts.append(text.strip())
            elif kind == "error":
                tally.errors[str(msg.get("code", "unknown"))] += 1
                sess.failed = True
            elif kind == "end":
                sess.end_at = now
                return
            elif kind in ("speech_started", "speech_ended"):
                pass  # voice-activity events carry no transcript
            else:
                tally.errors["client.unknown_message_type"] += 1
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd is not None else 1006
        if code == 1013:
            tally.rejections["close_1013"] += 1
        else:
            tally.errors[f"client.closed_{code}"] += 1
        sess.failed = True
        return
    tally.errors["client.closed_without_end"] += 1
    sess.failed = True


async def _send_audio(ws: ClientConnection, sess: _Session, receiver: asyncio.Task[None], *,
                      cfg: ClientConfig, deadline: float | None, tally: Tally) -> bool:
    """Send every frame on schedule. Returns whether the whole file went out (else see ``truncated``)."""
    frames = sess.utterance.frames
    t_start = time.monotonic()
    for i, frame in enumerate(frames):
        due = t_start + i * cfg.frame_s
        if deadline is not None and due >= deadline:
            sess.truncated = True
            return False
        if receiver.done():
            return False
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        now = time.monotonic()
        tally.send_lag_s.append(now - due)
        # Set before sending: a result can only be read after this coroutine yields again.
        sess.send_times[i] = now
        sess.frames_sent = i + 1
        await ws.send(frame)
    return True


def _retry_after_s(exc: InvalidStatus) -> float:
    value = exc.response.headers.get("Retry-After", "")
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER_S)
    except ValueError:
        return ERROR_BACKOFF_S


async def _refused_at_start(ws: ClientConnection, reply: dict[str, Any], *, cfg: ClientConfig,
                            tally: Tally) -> float:
    """The gateway filled up between the handshake and ``start``: its answer must be the ``overloaded``
    error with ``retry_after_ms``, then close 1013 (docs/websocket-protocol.md). Returns the back-off."""
    try:
        await asyncio.wait_for(ws.wait_closed(), cfg.close_timeout_s)
    except TimeoutError:
        pass
    retry_after_ms = reply.get("retry_after_ms")
    if ws.close_code != 1013:
        tally.errors[f"client.overloaded_then_closed_{ws.close_code}"] += 1
    elif not isinstance(retry_after_ms, int | float) or isinstance(retry_after_ms, bool):
        tally.errors["client.overloaded_without_retry_after"] += 1
    else:
        tally.rejections["overloaded_1013"] += 1
        return min(max(float(retry_after_ms) / 1000.0, 0.0), MAX_RETRY_AFTER_S)
    return ERROR_BACKOFF_S


async def run_session(utt: Utterance, *, cfg: ClientConfig, deadline: float | None, tally: Tally,
                      grpc_channel: Any = None) -> float:
    """Send one utterance as one session (a gRPC call when ``grpc_channel`` is given, for ``grpc://`` URLs;
    an MRCP call for ``sip:HOST:PORT`` URLs).

    Returns:
        How long the stream should back off before its next session (0 after a normal session).
    """
    if grpc_channel is not None:
        from loadtest.grpc_client import run_grpc_session

        return await run_grpc_session(utt, channel=grpc_channel, cfg=cfg, deadline=deadline, tally=tally)
    if cfg.url.startswith("sip:"):
        from loadtest.mrcp import run_mrcp_session

        return await run_mrcp_session(utt, uri=cfg.url, cfg=cfg, deadline=deadline, tally=tally)
    try:
        ws = await connect(
            cfg.url,
            compression=None,
            proxy=None,
            open_timeout=cfg.open_timeout_s,
            close_timeout=cfg.close_timeout_s,
            ping_interval=20.0,
            ping_timeout=20.0,
            max_size=1 << 20,
            max_queue=256,
            write_limit=1 << 16,
            user_agent_header="xlgate-loadtest",
            additional_headers={"Authorization": f"Bearer {cfg.token}"} if cfg.token else None,
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status == 503:
            tally.rejections["http_503"] += 1
            if "Retry-After" not in exc.response.headers:
                tally.errors["client.http_503_without_retry_after"] += 1  # an improper refusal
            return _retry_after_s(exc)
        tally.errors[f"client.http_{status}"] += 1
        return ERROR_BACKOFF_S
    except (OSError, TimeoutError, InvalidHandshake):
        tally.errors["client.connect_failed"] += 1
        return ERROR_BACKOFF_S

    sess = _Session(utterance=utt, send_times=np.zeros(len(utt.frames), dtype=np.float64))
    complete = False
    async with ws:
        try:
            await ws.send(json.dumps({
                "type": "start",
                "sample_rate_hz": cfg.sample_rate_hz,
                "encoding": cfg.encoding,
                "channels": 1,
                "interim_results": cfg.interim_results,
            }))
            reply = json.loads(await asyncio.wait_for(ws.recv(), cfg.ready_timeout_s))
        except TimeoutError:
            tally.errors["client.ready_timeout"] += 1
            return ERROR_BACKOFF_S
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else 1006
            if code == 1013:
                tally.rejections["close_1013"] += 1
            else:
                tally.errors[f"client.closed_{code}"] += 1
            return ERROR_BACKOFF_S
        except ValueError:
            tally.errors["client.bad_json"] += 1
            return ERROR_BACKOFF_S
        if not isinstance(reply, dict) or reply.get("type") != "ready":
            if isinstance(reply, dict) and reply.get("type") == "error" and reply.get("code") == "overloaded":
                return await _refused_at_start(ws, reply, cfg=cfg, tally=tally)
            if isinstance(reply, dict) and reply.get("type") == "error":
                tally.errors[str(reply.get("code", "unknown"))] += 1
            else:
                tally.errors["client.expected_ready"] += 1
            return ERROR_BACKOFF_S
        tally.counts["sessions_started"] += 1

        async with asyncio.TaskGroup() as tg:
            receiver = tg.create_task(_receive(ws, sess, tally))
            try:
                complete = await _send_audio(ws, sess, receiver, cfg=cfg, deadline=deadline, tally=tally)
                sess.stop_at = time.monotonic()
                await ws.send(json.dumps({"type": "stop"}))
            except ConnectionClosed:
                complete = False  # the receiver records why
            try:
                await asyncio.wait_for(asyncio.shield(receiver), cfg.stop_timeout_s)
            except TimeoutError:
                tally.errors["client.end_timeout"] += 1
                sess.failed = True
                receiver.cancel()

    tally.audio_sent_s += sess.utterance.frame_end_s[sess.frames_sent - 1] if sess.frames_sent else 0.0
    if sess.stop_at is not None and sess.end_at is not None:
        tally.stop_latency_s.append(sess.end_at - sess.stop_at)
    if sess.truncated:
        tally.counts["sessions_truncated"] += 1
    elif not complete or sess.failed or sess.end_at is None:
        tally.counts["sessions_failed"] += 1
    else:
        tally.counts["sessions_completed"] += 1
        tally.hypotheses.append((utt.file_id, " ".join(sess.texts)))
    return 0.0


async def run_stream(stream_index: int, utts: list[Utterance], *, cfg: ClientConfig, num_streams: int,
                     t0: float, tally: Tally, grpc_channel: Any = None) -> None:
    """One stream: wait for its staggered start, then send its files one session each."""
    start_at = t0 + cfg.stagger_s * stream_index / max(num_streams, 1)
    deadline = None if cfg.duration_s is None else t0 + cfg.duration_s
    delay = start_at - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
    order = plan_files(stream_index, num_streams=num_streams, num_files=len(utts),
                       one_pass=cfg.duration_s is None)
    for k in range(MAX_SESSIONS_PER_STREAM):
        if order is not None:
            if k >= len(order):
                return
            utt = utts[order[k]]
        else:
            utt = utts[(stream_index + k) % len(utts)]
        if deadline is not None and time.monotonic() >= deadline:
            return
        backoff_s = await run_session(utt, cfg=cfg, deadline=deadline, tally=tally, grpc_channel=grpc_channel)
        if backoff_s > 0:
            if deadline is not None:
                backoff_s = min(backoff_s, max(deadline - time.monotonic(), 0.0))
            await asyncio.sleep(backoff_s)


def budget_s(cfg: ClientConfig, utts: list[Utterance], *, num_streams: int) -> float:
    """Upper bound on how long a process may run its streams before everything is cancelled."""
    per_session_s = cfg.open_timeout_s + cfg.ready_timeout_s + cfg.stop_timeout_s + cfg.close_timeout_s
    if cfg.duration_s is not None:
        return cfg.stagger_s + cfg.duration_s + per_session_s + MAX_RETRY_AFTER_S + 5.0
    longest = 0.0
    for i in range(num_streams):
        order = plan_files(i, num_streams=num_streams, num_files=len(utts), one_pass=True) or []
        longest = max(longest, sum(utts[j].duration_s + per_session_s + MAX_RETRY_AFTER_S for j in order))
    return cfg.stagger_s + longest + 5.0


async def run_streams(utts: list[Utterance], stream_indices: list[int], *, cfg: ClientConfig,
                      num_streams: int, t0: float) -> Tally:
    """Run some of the streams in this event loop, all starting from the shared monotonic ``t0``.

    Args:
        utts: the audio, shared by all streams.
        stream_indices: which of the ``num_streams`` global streams this loop runs (fixes stagger and files).
        cfg: client settings.
        num_streams: streams across all processes.
        t0: common ``time.monotonic()`` start (CLOCK_MONOTONIC is system-wide on Linux).

    Returns:
        What was measured; ``client_cpu_s`` and ``wall_s`` cover this call.
    """
    tally = Tally()
    cpu0, wall0 = time.process_time(), time.monotonic()
    grpc_channel = None
    if cfg.url.startswith("grpc://"):
        from loadtest.grpc_client import open_channel

        grpc_channel = open_channel(cfg.url)
    try:
        async with asyncio.timeout(budget_s(cfg, utts, num_streams=num_streams)):
            async with asyncio.TaskGroup() as tg:
                for i in stream_indices:
                    tg.create_task(run_stream(i, utts, cfg=cfg, num_streams=num_streams, t0=t0, tally=tally,
                                              grpc_channel=grpc_channel))
    except TimeoutError:
        tally.errors["client.budget_exceeded"] += 1
    finally:
        if grpc_channel is not None:
            await grpc_channel.close()
    tally.client_cpu_s = time.process_time() - cpu0
    tally.wall_s = time.monotonic() - wall0
    return tally
