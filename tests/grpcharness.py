"""A real xlgate server with its gRPC listener on 127.0.0.1, and small helpers for gRPC tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from gateway.config import ServeSettings
from gateway.grpc_api import asr_pb2 as pb
from gateway.grpc_api import asr_pb2_grpc
from tests.wsharness import Running, free_port, running_server, settings_for


def grpc_settings_for(model: str, *extra: str) -> ServeSettings:
    """``settings_for`` with the gRPC listener on a free port."""
    return settings_for(model, "--grpc-port", str(free_port()), *extra)


@dataclass
class GrpcRunning:
    srv: Running
    target: str
    channel: grpc.aio.Channel
    stub: asr_pb2_grpc.RecognizerStub

    def metric(self, prefix: str) -> float:
        """The value of the metrics sample whose line starts with ``prefix`` (0 when absent)."""
        _, body = self.srv.http_get("/metrics")
        lines = [ln for ln in body.splitlines() if ln.startswith(prefix)]
        return float(lines[0].split()[-1]) if lines else 0.0


@contextlib.asynccontextmanager
async def running_grpc(settings: ServeSettings) -> AsyncIterator[GrpcRunning]:
    async with running_server(settings) as srv:
        target = f"127.0.0.1:{settings.grpc_port}"
        async with grpc.aio.insecure_channel(target) as channel:
            yield GrpcRunning(srv, target, channel, asr_pb2_grpc.RecognizerStub(channel))


def config(*, rate: int = 8000, channels: int = 1, separate: bool = True, interim: bool = True,
           **extra: Any) -> pb.StreamingRecognizeRequest:
    rc = pb.RecognitionConfig(encoding=pb.AUDIO_ENCODING_LINEAR16, sample_rate_hertz=rate,
                              audio_channel_count=channels, enable_separate_recognition_per_channel=separate,
                              **extra)
    return pb.StreamingRecognizeRequest(
        streaming_config=pb.StreamingRecognitionConfig(config=rc, interim_results=interim))


def audio_requests(pcm: np.ndarray, *, frame_samples: int = 160) -> Iterator[pb.StreamingRecognizeRequest]:
    """``pcm`` (int16, interleaved when stereo: pass frame_samples * channels) in 20 ms messages."""
    data = pcm.tobytes()
    step = frame_samples * pcm.itemsize
    for lo in range(0, len(data), step):
        yield pb.StreamingRecognizeRequest(audio_content=data[lo:lo + step])


async def requests(first: pb.StreamingRecognizeRequest | None,
                   rest: Iterable[pb.StreamingRecognizeRequest]) -> AsyncIterator[pb.StreamingRecognizeRequest]:
    if first is not None:
        yield first
    for request in rest:
        yield request


def seconds(d: Any) -> float:
    return float(d.seconds) + d.nanos / 1e9
