"""``xlgate stream --grpc HOST:PORT``: the real-time client over the gRPC API instead of WebSocket.

The audio source and the display are :mod:`gateway.client`'s (20 ms frames on an absolute schedule;
partials updated in place, finals as lines); only the conversation differs: a StreamingRecognize call whose
first request carries the configuration.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from gateway.grpc_api import asr_pb2 as pb
from gateway.grpc_api import asr_pb2_grpc
from gateway.grpc_api.convert import seconds

__all__ = ["stream_grpc"]

MAX_MESSAGE_BYTES = 4 * 1024 * 1024


def _display(response: pb.StreamingRecognizeResponse) -> dict[str, Any] | None:
    """A response in the shape :func:`gateway.client._show` prints (None for voice-activity events)."""
    if response.WhichOneof("response") != "result":
        return None
    result = response.result
    alternative = result.alternatives[0] if result.alternatives else pb.SpeechRecognitionAlternative()
    msg: dict[str, Any] = {"type": "final" if result.is_final else "partial", "channel": result.channel,
                           "text": alternative.transcript,
                           "start_ms": round(seconds(result.start_offset) * 1000),
                           "end_ms": round(seconds(result.end_offset) * 1000)}
    if result.is_final:
        msg["confidence"] = alternative.confidence
    return msg


async def stream_grpc(target: str, frames: AsyncIterator[tuple[bytes, int, int]], *, interim: bool,
                      hotwords: list[dict[str, Any]], as_json: bool, token: str | None = None) -> int:
    """Stream ``frames`` (PCM16 payload, rate, channels) to ``target``; print results. Returns the exit code.

    ``token`` goes as ``authorization: Bearer <token>`` metadata (for a gateway with authentication on).
    """
    from gateway.client import _show

    tty = sys.stdout.isatty() and not as_json
    first = await anext(frames)
    _, rate, channels = first
    config = pb.RecognitionConfig(
        encoding=pb.AUDIO_ENCODING_LINEAR16, sample_rate_hertz=rate, audio_channel_count=channels,
        enable_separate_recognition_per_channel=True, enable_word_time_offsets=True,
        hotwords=[pb.Hotword(phrase=h["phrase"], boost=h.get("boost", 0.0)) for h in hotwords])

    async def requests() -> AsyncIterator[pb.StreamingRecognizeRequest]:
        # Nothing, not even the config, until the gateway has taken the call (it sends its initial metadata
        # before reading anything): a call it refuses (UNAUTHENTICATED, RESOURCE_EXHAUSTED) then ends with its
        # status, not with a write racing that status, which grpcio's aio client reports as INTERNAL
        # (grpc/grpc#36066).
        await call.initial_metadata()
        if call.done():
            return
        yield pb.StreamingRecognizeRequest(
            streaming_config=pb.StreamingRecognitionConfig(config=config, interim_results=interim))
        yield pb.StreamingRecognizeRequest(audio_content=first[0])
        async for data, _, _ in frames:
            yield pb.StreamingRecognizeRequest(audio_content=data)

    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        stub = asr_pb2_grpc.RecognizerStub(channel)  # type: ignore[no-untyped-call]
        metadata = (("authorization", f"Bearer {token}"),) if token else None
        call = stub.StreamingRecognize(requests(), metadata=metadata)
        try:
            async for response in call:
                if as_json:
                    print(json.dumps(MessageToDict(response)), flush=True)
                else:
                    msg = _display(response)
                    if msg is not None:
                        _show(msg, tty)
        except grpc.aio.AioRpcError as exc:
            print(f"xlgate stream: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    return 0
