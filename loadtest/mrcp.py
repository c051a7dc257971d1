"""MRCP load: ``python -m loadtest.mrcp --sip sip:HOST:PORT --audio-dir DIR --sessions N``.

N concurrent calls, each a loop of: INVITE, RECOGNIZE (free dictation), the file's audio as real-time paced
RTP (then RTP simply stops, as a PBX's client does at the end of its prompt), RECOGNITION-COMPLETE, BYE.
Reported per recognition (milliseconds, from the audio's own speech bounds, found by frame energy):

* START-OF-INPUT latency: event arrival minus the moment speech onset was sent;
* RECOGNITION-COMPLETE latency: event arrival minus the moment the last speech was sent, minus the
  Speech-Complete-Timeout asked for (the wait the protocol prescribes is not the server's latency);
* failures by kind: refused calls (503), timeouts, completion causes other than ``000 success``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gateway.mrcp_client import CallRefused, MrcpClient
from loadtest.audio import list_audio_files, read_audio
from loadtest.stats import summarize_ms

FRAME_SAMPLES = 160
SPEECH_COMPLETE_TIMEOUT_MS = 500
MAX_RETRY_AFTER_S = 5.0  # longest a refused caller waits before its next call


@dataclass(frozen=True, slots=True)
class Recognition:
    """One recognition's outcome."""

    file_id: str
    start_of_input_s: float | None
    complete_s: float | None
    cause: str | None
    failure: str | None
    retry_after: str | None = None  # a refusal's Retry-After header


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
        missing = "_without_retry_after" if exc.status == 503 and exc.retry_after is None else ""
        return Recognition(file_id, None, None, None, f"refused_{exc.status}{missing}", exc.retry_after)
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


def _retry_after_s(header: str | None) -> float:
    try:
        return min(max(float(header or ""), 0.0), MAX_RETRY_AFTER_S)
    except ValueError:
        return MAX_RETRY_AFTER_S


async def run_sessions(uri: str, clips: Sequence[tuple[str, np.ndarray]], *, sessions: int,
                       rounds: int, deadline: float | None = None) -> list[Recognition]:
    """``sessions`` concurrent callers, each making ``rounds`` calls through the clips (staggered start).

    A refused call is retried after its Retry-After (at most ``MAX_RETRY_AFTER_S``), as a PBX would, and
    counts as a round. With ``deadline`` (a ``time.monotonic()`` instant) no call starts after it (one
    started before it runs to its end).
    """

    async def caller(index: int) -> list[Recognition]:
        await asyncio.sleep(index * 0.05)
        out = []
        for round_ in range(rounds):
            file_id, pcm = clips[(index + round_ * sessions) % len(clips)]
            if deadline is not None and time.monotonic() >= deadline:
                break
            result = await recognize_once(uri, file_id, pcm, timeout_s=pcm.shape[0] / 8000 + 20)
            out.append(result)
            if result.failure is not None and result.failure.startswith("refused_"):
                pause_s = _retry_after_s(result.retry_after)
                if deadline is not None:
                    pause_s = min(pause_s, max(deadline - time.monotonic(), 0.0))
                await asyncio.sleep(pause_s)
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
