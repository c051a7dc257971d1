"""One real-time paced session over the gateway's gRPC API (``--url grpc://HOST:PORT``).

The same measurement as the WebSocket session of :mod:`loadtest.client`: frames on an absolute schedule,
each result's latency taken from its ``audio_processed`` offset and the send time of the frame holding that
instant, over-runs counted. Only the conversation differs: a StreamingRecognize call whose first request
is the configuration and whose half-close is the stop. A client process's streams share one channel (one
HTTP/2 connection, multiplexed), opened by :func:`loadtest.client.run_streams`.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import grpc
import numpy as np

from gateway.grpc_api import asr_pb2 as pb
from gateway.grpc_api import asr_pb2_grpc

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from loadtest.audio import Utterance
    from loadtest.client import ClientConfig, Tally

_ENCODINGS = {"pcm_s16le": pb.AUDIO_ENCODING_LINEAR16, "mulaw": pb.AUDIO_ENCODING_MULAW}


def open_channel(url: str) -> grpc.aio.Channel:
    """The one channel (HTTP/2 connection) a client process's streams share; ``grpc://HOST:PORT``."""
    parts = urlsplit(url)
    return grpc.aio.insecure_channel(f"{parts.hostname}:{parts.port or 50051}")


async def run_grpc_session(utt: Utterance, *, channel: grpc.aio.Channel, cfg: ClientConfig, deadline: float | None,
                           tally: Tally) -> float:
    """Send one utterance as one StreamingRecognize call. Returns how long to back off before the next."""
    from loadtest.client import ERROR_BACKOFF_S, MAX_MESSAGES_PER_SESSION, _result_latency, _Session

    sess = _Session(utterance=utt, send_times=np.zeros(len(utt.frames), dtype=np.float64))
    config = pb.RecognitionConfig(encoding=_ENCODINGS[cfg.encoding], sample_rate_hertz=cfg.sample_rate_hz,
                                  audio_channel_count=1)

    async def requests() -> AsyncIterator[pb.StreamingRecognizeRequest]:
        # Nothing, not even the config, until xlgate has taken the call (it sends its initial metadata
        # before reading anything): a call it refuses (UNAUTHENTICATED, RESOURCE_EXHAUSTED) then ends with its
        # status, not with a write racing that status, which grpcio's aio client reports as INTERNAL
        # (grpc/grpc#36066).
        await call.initial_metadata()
        if call.done():
            return
        yield pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig(
            config=config, interim_results=cfg.interim_results))
        t_start = time.monotonic()
        for i, frame in enumerate(utt.frames):
            due = t_start + i * cfg.frame_s
            if deadline is not None and due >= deadline:
                sess.truncated = True
                break
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.monotonic()
            tally.send_lag_s.append(now - due)
            sess.send_times[i] = now
            sess.frames_sent = i + 1
            yield pb.StreamingRecognizeRequest(audio_content=frame)
        sess.stop_at = time.monotonic()

    stub = asr_pb2_grpc.RecognizerStub(channel)  # type: ignore[no-untyped-call]
    metadata = (("authorization", f"Bearer {cfg.token}"),) if cfg.token else None
    call = stub.StreamingRecognize(requests(), metadata=metadata)
    started = False
    received = 0
    try:
        budget_s = utt.duration_s + cfg.open_timeout_s + cfg.stop_timeout_s
        async with asyncio.timeout(budget_s):
            async for response in call:
                now = time.monotonic()
                if not started:
                    started = True
                    tally.counts["sessions_started"] += 1
                received += 1
                if received > MAX_MESSAGES_PER_SESSION:
                    tally.errors["client.too_many_messages"] += 1
                    sess.failed = True
                    call.cancel()
                    break
                if response.WhichOneof("response") != "result":
                    continue
                _record(response.result, sess, now, tally, _result_latency)
        sess.end_at = time.monotonic()
    except TimeoutError:
        call.cancel()
        tally.errors["client.end_timeout"] += 1
        sess.failed = True
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED or (code is grpc.StatusCode.UNAVAILABLE and not started):
            tally.rejections[f"grpc_{code.name.lower()}"] += 1
            return ERROR_BACKOFF_S
        tally.errors[f"client.grpc_{code.name.lower()}"] += 1
        sess.failed = True
    if started:
        tally.audio_sent_s += utt.frame_end_s[sess.frames_sent - 1] if sess.frames_sent else 0.0
        if sess.stop_at is not None and sess.end_at is not None:
            tally.stop_latency_s.append(max(0.0, sess.end_at - sess.stop_at))
    if sess.truncated:
        tally.counts["sessions_truncated"] += 1
    elif sess.failed or sess.end_at is None:
        tally.counts["sessions_failed"] += 1
        return ERROR_BACKOFF_S
    else:
        tally.counts["sessions_completed"] += 1
        tally.hypotheses.append((utt.file_id, " ".join(sess.texts)))
    return 0.0


def _record(result: Any, sess: Any, now: float, tally: Tally, latency_of: Any) -> None:
    """Count one result and its latency, as the WebSocket receiver does for a JSON result."""
    processed = result.audio_processed
    msg = {"type": "final" if result.is_final else "partial",
           "audio_end_ms": processed.seconds * 1000 + processed.nanos / 1e6}
    kind = "finals" if result.is_final else "partials"
    tally.counts[kind] += 1
    latency = latency_of(sess, msg, now, tally)
    if latency is not None:
        (tally.final_latency_s if result.is_final else tally.partial_latency_s).append(latency)
    if result.is_final and result.alternatives and result.alternatives[0].transcript.strip():
        sess.texts.append(result.alternatives[0].transcript.strip())
