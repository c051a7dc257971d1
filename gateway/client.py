"""``xlgate stream``: a real-time WebSocket (or, with ``--grpc``, gRPC) client for a WAV file or the microphone.

Audio is sent as 20 ms frames of 16-bit PCM on an absolute schedule (no drift), at real time or faster with
``--speed``; partials are shown updating in place on a terminal (one line per partial otherwise) and finals
are printed as lines, each with its channel and times.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateway.loop import run_async

FRAME_MS = 20
DEFAULT_URL = "ws://127.0.0.1:8080/v1/stream"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", nargs="?", help="audio file to stream (WAV or anything `transcribe` reads)")
    parser.add_argument("--ws", default=DEFAULT_URL, help=f"gateway URL (default {DEFAULT_URL})")
    parser.add_argument("--grpc", metavar="HOST:PORT",
                        help="use the gateway's gRPC API at HOST:PORT (e.g. 127.0.0.1:50051) instead of --ws")
    parser.add_argument("--mic", action="store_true", help="stream the default microphone (needs pyaudio)")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="pace relative to real time (2 = twice as fast; 0 = as fast as possible)")
    parser.add_argument("--no-interim", action="store_true", help="ask for finals only")
    parser.add_argument("--hotword", action="append", default=[], metavar="PHRASE[:BOOST]",
                        help="boost a phrase (repeatable)")
    parser.add_argument("--json", action="store_true", help="print every server message as JSON")
    token = parser.add_mutually_exclusive_group()
    token.add_argument("--token", help="bearer token for a gateway with authentication on (WebSocket: sent in "
                                       "the Authorization header; gRPC: as authorization metadata)")
    token.add_argument("--token-file", metavar="PATH",
                       help="read the bearer token from PATH (keeps it out of the process list)")
    parser.add_argument("--mrcp", metavar="sip[s]:HOST:PORT",
                        help="send FILE over MRCPv2 (SIP + RTP + MRCP) instead of the WebSocket; prints the NLSML")
    parser.add_argument("--ca-file", metavar="PEM",
                        help="with --mrcp sips:HOST:PORT: CA certificate(s) that verify the server "
                             "(default: the system's)")
    parser.add_argument("--grammar", default="builtin:speech/transcribe",
                        help="with --mrcp: the grammar URI of the RECOGNIZE (default builtin:speech/transcribe)")
    parser.add_argument("--sip-credentials-file", metavar="PATH",
                        help="with --mrcp: a 'username:password' line answering the server's SIP digest challenge")
    parser.set_defaults(func=cmd_stream)


def _hotwords(items: list[str]) -> list[dict[str, Any]]:
    out = []
    for item in items:
        phrase, _, boost = item.rpartition(":") if ":" in item else (item, "", "")
        out.append({"phrase": phrase, "boost": float(boost)} if boost else {"phrase": item})
    return out


async def _file_frames(path: str, speed: float) -> AsyncIterator[tuple[bytes, int, int]]:
    from gateway.audio_files import read_audio_file
    from protocols.audio.pcm import float32_to_int16

    clip = read_audio_file(path)
    rate = clip.sample_rate_hz if clip.sample_rate_hz in (8000, 16000) else 8000
    chans = clip.channels
    if rate != clip.sample_rate_hz:
        from protocols.audio.resample import resample

        chans = [resample(c, from_hz=clip.sample_rate_hz, to_hz=rate) for c in chans]
    pcm = np.stack([float32_to_int16(c) for c in chans], axis=1)  # (N, C) interleaved
    step = rate * FRAME_MS // 1000
    start = time.monotonic()
    for k, lo in enumerate(range(0, pcm.shape[0], step)):
        if speed > 0:
            delay = start + k * FRAME_MS / 1000 / speed - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        yield pcm[lo:lo + step].tobytes(), rate, len(chans)


async def _mic_frames() -> AsyncIterator[tuple[bytes, int, int]]:
    try:
        import pyaudio
    except ImportError as exc:
        raise SystemExit("xlgate stream --mic needs PyAudio and PortAudio: "
                         "apt-get install portaudio19-dev && pip install 'xlgate[mic]'") from exc
    pa = pyaudio.PyAudio()
    try:
        stream = pa.open(format=pyaudio.paInt16, channels=1, rate=16000, input=True,
                         frames_per_buffer=16000 * FRAME_MS // 1000)
    except OSError as exc:
        pa.terminate()
        raise SystemExit(f"cannot open the microphone: {exc}") from exc
    loop = asyncio.get_running_loop()
    try:
        while True:
            data = await loop.run_in_executor(None, stream.read, 16000 * FRAME_MS // 1000, False)
            yield data, 16000, 1
    finally:
        stream.close()
        pa.terminate()


def _show(msg: dict[str, Any], tty: bool) -> None:
    kind = msg.get("type")
    if kind == "partial":
        line = f"  ... [ch{msg['channel']}] {msg['text']}"
        if tty:
            sys.stdout.write("\r\x1b[K" + line[:200])
            sys.stdout.flush()
        else:
            print(line, flush=True)
    elif kind == "final":
        if tty:
            sys.stdout.write("\r\x1b[K")
        conf = msg.get("confidence")
        print(f"[ch{msg['channel']} {msg['start_ms'] / 1000:7.2f}-{msg['end_ms'] / 1000:7.2f}s"
              f"{f' conf {conf:.2f}' if conf is not None else ''}] {msg['text']}", flush=True)
    elif kind == "error":
        print(f"error: {msg.get('code')}: {msg.get('message')}", file=sys.stderr, flush=True)


async def stream_audio(url: str, frames: AsyncIterator[tuple[bytes, int, int]], *, interim: bool,
                       hotwords: list[dict[str, Any]], as_json: bool, token: str | None = None) -> int:
    tty = sys.stdout.isatty() and not as_json
    first = await anext(frames)
    _, rate, channels = first
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        async with connect(url, compression=None, max_size=2**20, open_timeout=10,
                           additional_headers=headers) as ws:
            start: dict[str, Any] = {"type": "start", "sample_rate_hz": rate, "encoding": "pcm_s16le",
                                     "channels": channels, "interim_results": interim}
            if hotwords:
                start["hotwords"] = hotwords
            await ws.send(json.dumps(start))

            async def send() -> None:
                await ws.send(first[0])
                async for data, _, _ in frames:
                    await ws.send(data)
                await ws.send(json.dumps({"type": "stop"}))

            sender = asyncio.create_task(send())
            status = 0
            try:
                async for raw in ws:
                    msg = json.loads(raw)
                    if as_json:
                        print(json.dumps(msg), flush=True)
                    else:
                        _show(msg, tty)
                    if msg.get("type") == "error" and msg.get("fatal"):
                        status = 1
            except ConnectionClosed:
                status = 1
            finally:
                sender.cancel()
                try:
                    await sender
                except (asyncio.CancelledError, ConnectionClosed):
                    pass
            return status
    except InvalidStatus as exc:
        body = exc.response.body.decode(errors="replace").strip()[:200] if exc.response.body else ""
        print(f"xlgate stream: the gateway refused the connection: HTTP {exc.response.status_code}"
              + (f": {body}" if body else ""), file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"xlgate stream: cannot connect to {url}: {exc}", file=sys.stderr)
        return 1


def _token(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str | None:
    """The bearer token of ``--token`` or ``--token-file`` (its first line), or None."""
    if args.token_file is None:
        return str(args.token) if args.token else None
    try:
        with open(args.token_file, encoding="utf-8") as handle:
            token = handle.readline().strip()
    except OSError as exc:
        parser.error(f"--token-file: cannot read {args.token_file}: {exc.strerror}")
    if not token:
        parser.error(f"--token-file: {args.token_file} holds no token on its first line")
    return token


def _sip_credentials(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[str, str] | None:
    """(username, password) from ``--sip-credentials-file``'s first line, or None."""
    if args.sip_credentials_file is None:
        return None
    try:
        with open(args.sip_credentials_file, encoding="utf-8") as handle:
            username, colon, password = handle.readline().strip().partition(":")
    except OSError as exc:
        parser.error(f"--sip-credentials-file: cannot read {args.sip_credentials_file}: {exc.strerror}")
    if not (username and colon and password):
        parser.error(f"--sip-credentials-file: expected 'username:password' on the first line of "
                     f"{args.sip_credentials_file}")
    return username, password


def cmd_stream(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.mic == bool(args.file):
        parser.error("give exactly one of FILE or --mic")
    args.token = _token(args, parser)
    if args.mrcp:
        if args.token:
            parser.error("--token is for the WebSocket and gRPC APIs; MRCP peers are allowed by address")
        if args.mic:
            parser.error("--mrcp streams a FILE, not the microphone")
        from gateway.mrcp_client import cmd_stream_mrcp

        return cmd_stream_mrcp(args.mrcp, args.file, grammar=args.grammar, speed=args.speed,
                               ca_file=args.ca_file, credentials=_sip_credentials(args, parser))
    if args.sip_credentials_file:
        parser.error("--sip-credentials-file goes with --mrcp")
    if args.file:
        from protocols.audio.errors import AudioFileError

        try:
            frames = _file_frames(args.file, args.speed)
            coro = _streamer(args)(frames, interim=not args.no_interim, hotwords=_hotwords(args.hotword),
                                   as_json=args.json)
            return int(run_async(coro))
        except AudioFileError as exc:
            print(f"xlgate stream: error: {exc}", file=sys.stderr)
            return 1
    return int(run_async(_streamer(args)(_mic_frames(), interim=not args.no_interim,
                                         hotwords=_hotwords(args.hotword), as_json=args.json)))


def _streamer(args: argparse.Namespace) -> Callable[..., Coroutine[Any, Any, int]]:
    """The conversation the flags ask for: gRPC with ``--grpc``, else WebSocket."""
    if args.grpc:
        from gateway.grpc_api.client import stream_grpc

        return functools.partial(stream_grpc, args.grpc, token=args.token)
    return functools.partial(stream_audio, args.ws, token=args.token)
