"""MRCP load: ``python -m loadtest.mrcp --sip sip:HOST:PORT --audio-dir DIR --sessions N``.

N concurrent calls, each a loop of: INVITE, RECOGNIZE (free dictation), the file's audio as real-time paced
RTP (then RTP simply stops, as a PBX's client does at the end of its prompt), RECOGNITION-COMPLETE, BYE.
Reported per recognition (milliseconds, from the audio's own speech bounds, found by frame energy):

* START-OF-INPUT latency: event arrival minus the moment speech onset was sent;
* RECOGNITION-COMPLETE latency: event arrival minus the moment the last speech was sent, minus the
  Speech-Complete-Timeout asked for (the wait the protocol prescribes is not the server's latency);
* failures by kind: refused calls (503), timeouts, completion causes other than ``000 success``.

:func:`run_mrcp_session` is the same call as one session of the common runner (``python -m loadtest run``,
``find-max`` and ``compare`` with a ``sip:HOST:PORT`` URL): the runner's frames (the same audio the WebSocket
and gRPC sessions send; ``pcm_s16le`` goes out as L16, ``mulaw`` as PCMU, the same samples), partial results
opted in with ``xlgate.partial-results=true``, and each INTERMEDIATE-RESULT's latency measured exactly as a
WebSocket partial's: its receive time minus the send time of the frame holding its
``xlgate.audio-end-ms``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gateway.mrcp_client import CallRefused, MrcpClient
from loadtest.audio import list_audio_files, read_audio
from loadtest.stats import summarize_ms
from protocols.audio.g711 import mulaw_decode
from protocols.errors import GatewayError
from protocols.mrcp.events import MrcpEvent
from protocols.mrcp.params import VENDOR_AUDIO_END_MS, VENDOR_PARTIAL_RESULTS

if TYPE_CHECKING:
    from loadtest.audio import Utterance
    from loadtest.client import ClientConfig, Tally

FRAME_SAMPLES = 160
SPEECH_COMPLETE_TIMEOUT_MS = 500


@dataclass(frozen=True, slots=True)
class Recognition:
    """One recognition's outcome."""

    file_id: str
    start_of_input_s: float | None
    complete_s: float | None
    cause: str | None
    failure: str | None


def speech_bounds(pcm: np.ndarray) -> tuple[float, float]:
    """(onset, end) of speech in seconds: the first and last 20 ms frame louder than a tenth of the loudest."""
    frames = pcm[: pcm.shape[0] // FRAME_SAMPLES * FRAME_SAMPLES].astype(np.float64).reshape(-1, FRAME_SAMPLES)
    rms = np.sqrt((frames**2).mean(axis=1))  # (frames,)
    loud = np.flatnonzero(rms > max(100.0, 0.1 * float(rms.max(initial=0.0))))
    if loud.size == 0:
        return 0.0, pcm.shape[0] / 8000
    return float(loud[0]) * FRAME_SAMPLES / 8000, float(loud[-1] + 1) * FRAME_SAMPLES / 8000


async def recognize_once(uri: str, file_id: str, pcm: np.ndarray, *, timeout_s: float) -> Recognition:
    """One call with one RECOGNIZE of ``pcm``."""
    onset_s, end_s = speech_bounds(pcm)
    client = MrcpClient(uri)
    try:
        await client.connect()
    except CallRefused as exc:
        return Recognition(file_id, None, None, None, f"refused_{exc.status}")
    except (OSError, TimeoutError):
        return Recognition(file_id, None, None, None, "connect")
    loop = asyncio.get_running_loop()
    sender: asyncio.Task[None] | None = None
    try:
        await client.request("RECOGNIZE", ("Content-Type", "text/uri-list"),
                             ("Speech-Complete-Timeout", str(SPEECH_COMPLETE_TIMEOUT_MS)),
                             ("No-Input-Timeout", "5000"), body=b"builtin:speech/transcribe")
        started = loop.time()
        sender = asyncio.create_task(client.send_audio(pcm))
        start_of_input: float | None = None
        async with asyncio.timeout(timeout_s):
            while (event := await client.next_event(timeout_s)) is not None:
                if event.event_name == "START-OF-INPUT":
                    start_of_input = loop.time() - (started + onset_s)
                elif event.event_name == "RECOGNITION-COMPLETE":
                    complete = loop.time() - (started + end_s) - SPEECH_COMPLETE_TIMEOUT_MS / 1000
                    cause = event.header("Completion-Cause")
                    failure = None if cause == "000 success" else f"cause_{(cause or '?').split()[0]}"
                    return Recognition(file_id, start_of_input, complete, cause, failure)
        return Recognition(file_id, start_of_input, None, None, "mrcp_closed")
    except (TimeoutError, OSError):
        return Recognition(file_id, None, None, None, "timeout")
    finally:
        if sender is not None:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        await client.bye()


async def run_sessions(uri: str, clips: Sequence[tuple[str, np.ndarray]], *, sessions: int,
                       rounds: int) -> list[Recognition]:
    """``sessions`` concurrent callers, each making ``rounds`` calls through the clips (staggered start)."""

    async def caller(index: int) -> list[Recognition]:
        await asyncio.sleep(index * 0.05)
        out = []
        for round_ in range(rounds):
            file_id, pcm = clips[(index + round_ * sessions) % len(clips)]
            out.append(await recognize_once(uri, file_id, pcm, timeout_s=pcm.shape[0] / 8000 + 20))
        return out

    results = await asyncio.gather(*(caller(i) for i in range(sessions)))
    return [r for per_caller in results for r in per_caller]


def report(results: Sequence[Recognition], *, sessions: int, wall_s: float) -> dict[str, object]:
    """The JSON report: latency summaries (ms) and failures by kind."""
    return {
        "sessions": sessions,
        "recognitions": len(results),
        "wall_s": round(wall_s, 2),
        "start_of_input_latency_ms": summarize_ms([r.start_of_input_s for r in results
                                                   if r.start_of_input_s is not None]),
        "recognition_complete_latency_ms": summarize_ms([r.complete_s for r in results if r.complete_s is not None]),
        "failures": dict(Counter(r.failure for r in results if r.failure is not None)),
    }


_NLSML_NS = "{urn:ietf:params:xml:ns:mrcpv2}"
# The runner's wire encodings as RTP codecs: the same samples (L16 is PCM in network byte order).
_CODECS = {"pcm_s16le": "L16", "mulaw": "PCMU"}


def utterance_pcm(utt: Utterance, encoding: str) -> np.ndarray:
    """The int16 samples of the runner's frames (to find the speech bounds the MRCP latencies start from)."""
    data = b"".join(utt.frames)
    if encoding == "mulaw":
        return mulaw_decode(data)
    return np.frombuffer(data, dtype="<i2")


def audio_end_ms(event: MrcpEvent) -> float | None:
    """The ``xlgate.audio-end-ms`` of an INTERMEDIATE-RESULT's Vendor-Specific-Parameters, if any."""
    for item in (event.header("Vendor-Specific-Parameters") or "").split(";"):
        name, _, value = item.partition("=")
        if name.strip() == VENDOR_AUDIO_END_MS:
            try:
                return float(value)
            except ValueError:
                return None
    return None


def nlsml_text(body: bytes) -> str:
    """The recognised words of an NLSML result (its first interpretation's ``<input>``); empty if none."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return ""
    node = root.find(f"{_NLSML_NS}interpretation/{_NLSML_NS}input")
    return "" if node is None or node.text is None else node.text.strip()


async def run_mrcp_session(utt: Utterance, *, uri: str, cfg: ClientConfig, deadline: float | None,
                           tally: Tally) -> float:
    """One utterance as one MRCP call of the common runner (see the module docstring).

    Counted in ``tally`` as a WebSocket session is (partials, sessions, errors, rejections for 503, the
    final text for WER), plus the START-OF-INPUT and RECOGNITION-COMPLETE latencies of this module's own
    report. ``stop_to_end``: from the last frame sent to RECOGNITION-COMPLETE (it includes the
    Speech-Complete-Timeout). Returns how long to back off before the next call.
    """
    from loadtest.client import (
        ERROR_BACKOFF_S,
        MAX_MESSAGES_PER_SESSION,
        MAX_RETRY_AFTER_S,
        _result_latency,
        _Session,
    )

    sess = _Session(utterance=utt, send_times=np.zeros(len(utt.frames), dtype=np.float64))
    onset_s, end_s = speech_bounds(utterance_pcm(utt, cfg.encoding))
    client = MrcpClient(uri, codec=_CODECS[cfg.encoding])
    try:
        async with asyncio.timeout(cfg.open_timeout_s):
            await client.connect()
    except CallRefused as exc:
        await client.close()
        if exc.status == 503:
            tally.rejections["sip_503"] += 1
            try:
                return min(max(float(exc.retry_after or ERROR_BACKOFF_S), 0.0), MAX_RETRY_AFTER_S)
            except ValueError:
                return ERROR_BACKOFF_S
        tally.errors[f"client.sip_{exc.status}"] += 1
        return ERROR_BACKOFF_S
    except (OSError, TimeoutError, GatewayError):
        await client.close()
        tally.errors["client.connect_failed"] += 1
        return ERROR_BACKOFF_S
    width = 1 if cfg.encoding == "mulaw" else 2
    little_endian = cfg.encoding == "pcm_s16le"
    complete = False
    try:
        headers = [("Content-Type", "text/uri-list"), ("Speech-Complete-Timeout", str(SPEECH_COMPLETE_TIMEOUT_MS)),
                   ("No-Input-Timeout", "5000"),
                   # Every transcript is the result, however unsure the model is (WER is scored, not matches).
                   ("Confidence-Threshold", "0.0")]
        if cfg.interim_results:
            headers.append(("Vendor-Specific-Parameters", f"{VENDOR_PARTIAL_RESULTS}=true"))
        response = await client.request("RECOGNIZE", *headers, body=b"builtin:speech/transcribe",
                                         timeout_s=cfg.ready_timeout_s)
        if response.status_code >= 300:
            tally.errors[f"client.mrcp_{response.status_code}"] += 1
            return ERROR_BACKOFF_S
        tally.counts["sessions_started"] += 1

        async def receive() -> None:
            nonlocal complete
            for _ in range(MAX_MESSAGES_PER_SESSION):
                event = await client.next_event(utt.duration_s + cfg.stop_timeout_s)
                now = time.monotonic()
                if event is None:
                    tally.errors["client.mrcp_closed"] += 1
                    sess.failed = True
                    return
                if event.event_name == "INTERMEDIATE-RESULT":
                    tally.counts["partials"] += 1
                    latency = _result_latency(sess, {"type": "partial", "audio_end_ms": audio_end_ms(event)},
                                              now, tally)
                    if latency is not None:
                        tally.partial_latency_s.append(latency)
                elif event.event_name == "START-OF-INPUT":
                    tally.start_of_input_latency_s.append(now - _sent_at(sess, onset_s))
                elif event.event_name == "RECOGNITION-COMPLETE":
                    sess.end_at = now
                    tally.counts["finals"] += 1
                    cause = (event.header("Completion-Cause") or "?").split()[0]
                    if cause not in {"000", "001"}:  # 001: the (weak) model's words matched nothing
                        tally.errors[f"mrcp.cause_{cause}"] += 1
                        sess.failed = True
                        return
                    complete = True
                    text = nlsml_text(event.body)
                    if text:
                        sess.texts.append(text)
                    if sess.frames_sent == len(utt.frames):
                        tally.complete_latency_s.append(now - _sent_at(sess, end_s) - SPEECH_COMPLETE_TIMEOUT_MS / 1000)
                    return
            tally.errors["client.too_many_messages"] += 1
            sess.failed = True

        async def send(receiver: asyncio.Task[None]) -> None:
            t_start = time.monotonic()
            for i, frame in enumerate(utt.frames):
                due = t_start + i * cfg.frame_s
                if deadline is not None and due >= deadline:
                    sess.truncated = True
                    return
                if receiver.done():
                    return
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                now = time.monotonic()
                tally.send_lag_s.append(now - due)
                sess.send_times[i] = now
                sess.frames_sent = i + 1
                payload = np.frombuffer(frame, "<i2").astype(">i2").tobytes() if little_endian else frame
                client.send_payload(payload, num_samples=len(frame) // width, marker=i == 0)
            sess.stop_at = time.monotonic()  # then RTP simply stops, as a PBX's client does

        async with asyncio.TaskGroup() as tg:
            receiver = tg.create_task(receive())
            await send(receiver)
            if sess.truncated and not receiver.done():
                # The trial's deadline cut the file: STOP (no RECOGNITION-COMPLETE follows, RFC 6787 §9.10)
                # rather than wait for the timers, so the call ends before the next trial starts.
                receiver.cancel()
                await client.request("STOP", timeout_s=cfg.stop_timeout_s)
            else:
                try:
                    await asyncio.wait_for(asyncio.shield(receiver), utt.duration_s + cfg.stop_timeout_s + 1.0)
                except TimeoutError:
                    tally.errors["client.end_timeout"] += 1
                    sess.failed = True
                    receiver.cancel()
    except (TimeoutError, OSError, GatewayError):
        tally.errors["client.mrcp_failed"] += 1
        sess.failed = True
    finally:
        await client.bye()
    tally.audio_sent_s += utt.frame_end_s[sess.frames_sent - 1] if sess.frames_sent else 0.0
    if sess.stop_at is not None and sess.end_at is not None:
        tally.stop_latency_s.append(max(0.0, sess.end_at - sess.stop_at))
    if sess.truncated:
        tally.counts["sessions_truncated"] += 1
    elif not complete or sess.failed or sess.end_at is None:
        tally.counts["sessions_failed"] += 1
    else:
        tally.counts["sessions_completed"] += 1
        tally.hypotheses.append((utt.file_id, " ".join(sess.texts)))
    return 0.0


def _sent_at(sess: object, offset_s: float) -> float:
    """When the frame holding ``offset_s`` of the utterance was sent (monotonic)."""
    from loadtest.client import _Session

    assert isinstance(sess, _Session)
    ends = sess.utterance.frame_end_s
    index = min(int(np.searchsorted(ends, offset_s - 1e-9)), max(sess.frames_sent - 1, 0))
    return float(sess.send_times[index])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.mrcp", description=__doc__.split("\n")[0])
    parser.add_argument("--sip", required=True, help="the server's sip:HOST:PORT")
    parser.add_argument("--audio-dir", type=Path, required=True, help="folder of 8 kHz mono WAV files")
    parser.add_argument("--sessions", type=int, default=4, help="concurrent calls")
    parser.add_argument("--rounds", type=int, default=1, help="calls per caller")
    parser.add_argument("--max-files", type=int, default=100)
    parser.add_argument("--out", type=Path, help="JSON report path (printed to stdout as well)")
    args = parser.parse_args(argv)
    clips = [(path.stem, read_audio(path, sample_rate_hz=8000))
             for path in list_audio_files(args.audio_dir, max_files=args.max_files)]
    if not clips:
        parser.error(f"no audio files in {args.audio_dir}")
    started = time.monotonic()
    results = asyncio.run(run_sessions(args.sip, clips, sessions=args.sessions, rounds=args.rounds))
    summary = report(results, sessions=args.sessions, wall_s=time.monotonic() - started)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
