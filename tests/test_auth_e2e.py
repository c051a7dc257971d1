"""Authentication over real loopback sockets: ``run_server`` with static tokens and ES256 JWTs, the bundled
model, a websockets client, a grpc.aio channel and xlgate's own ``stream`` clients (--token).

Missing, wrong, expired and malformed credentials are refused on both APIs before any stream exists (the
WebSocket handshake with 401 and a Bearer challenge, gRPC with UNAUTHENTICATED), each refusal is counted by
reason, and no token reaches the log, not even at DEBUG; valid credentials (header, query parameter,
metadata) get a real transcript of real speech.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import jiwer
import jwt
import numpy as np
import pytest
import soundfile as sf
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gateway.client import _file_frames, stream_audio
from gateway.grpc_api import asr_pb2 as pb
from gateway.grpc_api.client import stream_grpc
from streaming_model.data.voices import synthesize
from tests.grpcharness import GrpcRunning, config, grpc_settings_for, running_grpc
from tests.test_bundled_model import VOICE
from tests.wsharness import collect, free_port, running_server, send_audio, settings_for

pytestmark = pytest.mark.timeout(240)

STATIC = "static-token-for-tests-0123456789"
AUDIENCE = "xlgate-e2e"
PHRASE = "can you hear me"


def failures(g: GrpcRunning, protocol: str) -> dict[str, float]:
    _, body = g.srv.http_get("/metrics")
    found = re.findall(
        rf'^xlgate_auth_failures_total{{protocol="{protocol}",reason="(\w+)"}} (\S+)$', body, re.MULTILINE
    )
    return {reason: float(value) for reason, value in found}


def started(g: GrpcRunning, protocol: str) -> float:
    return g.metric(f'xlgate_streams_started_total{{protocol="{protocol}"}}')


def test_websocket_and_grpc_refuse_bad_credentials_and_serve_good_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    other_key = ec.generate_private_key(ec.SECP256R1())
    key_path = tmp_path / "jwt.pem"
    key_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    now = int(time.time())

    def token(signer: Any = key, algorithm: str = "ES256", **claims: Any) -> str:
        return jwt.encode({"sub": "agent-7", "aud": AUDIENCE, "exp": now + 300, **claims}, signer, algorithm)

    good_jwt = token()
    bad = {  # credentials -> the reason they are refused for
        "missing": None,
        "wrong static token": ("invalid", {"Authorization": "Bearer wrong-token-0123456789abcdef"}),
        "other signer": ("invalid", {"Authorization": f"Bearer {token(other_key)}"}),
        "alg none": ("invalid", {"Authorization": f"Bearer {token(None, 'none')}"}),
        "expired": ("expired", {"Authorization": f"Bearer {token(exp=now - 60)}"}),
        "basic scheme": ("malformed", {"Authorization": "Basic dXNlcjpwYXNz"}),
        "not a jwt": ("malformed", {"Authorization": "Bearer a.b.c"}),
    }
    expected = {"missing": 1.0, "invalid": 3.0, "expired": 1.0, "malformed": 2.0}

    speech = synthesize(PHRASE, VOICE, seed=2)
    wav = tmp_path / "call.wav"
    sf.write(wav, np.concatenate([speech, np.zeros(8000, dtype=np.float32)]), 8000, subtype="PCM_16")
    pcm = (np.clip(np.concatenate([speech, np.zeros(8000, dtype=np.float32)]), -1, 1) * 32767).astype(
        np.int16
    )

    async def websocket_cases(g: GrpcRunning) -> None:
        url = g.srv.ws_url
        for name, case in bad.items():
            headers = case[1] if case else None
            with pytest.raises(InvalidStatus) as refused:
                async with connect(url, additional_headers=headers, open_timeout=10):
                    pass
            response = refused.value.response
            assert response.status_code == 401, name
            challenge = response.headers["WWW-Authenticate"]
            assert challenge.startswith('Bearer realm="xlgate"'), challenge
            assert ("error=" in challenge) == (case is not None), (name, challenge)
        with pytest.raises(
            InvalidStatus
        ) as refused:  # a token in the query is malformed in the header's presence
            async with connect(
                f"{url}?access_token={STATIC}", additional_headers={"Authorization": f"Bearer {STATIC}"}
            ):
                pass
        assert refused.value.response.status_code == 401
        assert failures(g, "websocket") == {**expected, "malformed": 3.0}
        assert started(g, "websocket") == 0  # nothing got as far as a stream

        # The load balancer's probes on the WebSocket port need no token.
        reader, writer = await asyncio.open_connection("127.0.0.1", int(url.split(":")[2].split("/")[0]))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        writer.close()

        # A browser-style client: the JWT in the query string.
        async with connect(f"{url}?access_token={good_jwt}", compression=None, max_size=2**22) as ws:
            await ws.send(
                json.dumps(
                    {
                        "type": "start",
                        "sample_rate_hz": 8000,
                        "encoding": "pcm_s16le",
                        "channels": 1,
                        "interim_results": False,
                    }
                )
            )
            assert json.loads(await ws.recv())["type"] == "ready"
            await send_audio(ws, pcm)
            await ws.send(json.dumps({"type": "stop"}))
            finals = [m["text"] for m in await collect(ws, timeout_s=60) if m["type"] == "final"]
        assert jiwer.cer(PHRASE, " ".join(finals)) <= 0.3, finals

        # xlgate stream --token: the static token in the header.
        status = await stream_audio(
            url, _file_frames(str(wav), 0), interim=False, hotwords=[], as_json=True, token=STATIC
        )
        assert status == 0
        texts = [
            m["text"] for m in map(json.loads, capsys.readouterr().out.splitlines()) if m["type"] == "final"
        ]
        assert jiwer.cer(PHRASE, " ".join(texts)) <= 0.3, texts
        assert started(g, "websocket") == 2

    def gated(first: Any, call: list[Any]) -> Any:
        """A request stream that writes ``first`` only once the server has taken the call (its initial
        metadata), as xlgate's clients do: a write racing the server's refusal makes grpcio's aio client
        report INTERNAL instead of the server's status (grpc/grpc#36066)."""

        async def stream() -> Any:
            await call[0].initial_metadata()
            if not call[0].done():
                yield first

        return stream()

    async def grpc_cases(g: GrpcRunning) -> None:
        for name, case in bad.items():
            metadata = (("authorization", case[1]["Authorization"]),) if case else None
            holder: list[Any] = []
            holder.append(g.stub.StreamingRecognize(gated(config(), holder), metadata=metadata, timeout=10))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _ in holder[0]:
                    pass
            assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED, name
            assert STATIC not in (refused.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as refused:  # the unary method too
            await g.stub.Recognize(pb.RecognizeRequest(), timeout=10)
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert failures(g, "grpc") == {**expected, "missing": 2.0}
        assert started(g, "grpc") == 0

        # Orchestrators' health checks need no token; reflection does.
        health = health_pb2_grpc.HealthStub(g.channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

        holder = []
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        reflection = reflection_pb2_grpc.ServerReflectionStub(g.channel)
        holder.append(reflection.ServerReflectionInfo(gated(ask, holder), timeout=10))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in holder[0]:
                pass
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED

        # xlgate stream --grpc --token: the JWT as metadata.
        status = await stream_grpc(
            g.target, _file_frames(str(wav), 0), interim=False, hotwords=[], as_json=True, token=good_jwt
        )
        assert status == 0
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        texts = [
            alt["transcript"]
            for m in lines
            if m.get("result", {}).get("isFinal")
            for alt in m["result"]["alternatives"][:1]
        ]
        assert jiwer.cer(PHRASE, " ".join(texts)) <= 0.3, lines
        assert started(g, "grpc") == 1

    async def main() -> None:
        settings = grpc_settings_for(
            "bundled",
            "--auth-tokens",
            STATIC,
            "--auth-jwt-key",
            str(key_path),
            "--auth-jwt-algorithms",
            "ES256",
            "--auth-jwt-audience",
            AUDIENCE,
        )
        async with running_grpc(settings) as g:
            await websocket_cases(g)
            await grpc_cases(g)

    with caplog.at_level(logging.DEBUG):
        asyncio.run(main())
    assert "authentication: ON for WebSocket and gRPC: 1 static token(s); JWT ES256" in caplog.text
    assert "refused: missing credentials" in caplog.text
    # The server logged handshake requests and headers at DEBUG, with the credentials redacted (the test's
    # own websockets client logs what it sends: not the server's log).
    server_log = "\n".join(
        f"{r.name}: {r.getMessage()}" for r in caplog.records if not r.name.startswith("websockets.client")
    )
    assert "Authorization: [redacted]" in server_log and "access_token=[redacted]" in server_log
    for secret in (STATIC, good_jwt):
        assert secret not in server_log


def status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as response:
        return int(response.status)


def test_metrics_and_health_on_a_separate_interface(chatty_checkpoint: str) -> None:
    """--metrics-host 127.0.0.2: /metrics and the probes answer there, and nothing listens on --host's port."""
    port = free_port()
    settings = settings_for(chatty_checkpoint, "--metrics-port", str(port), "--metrics-host", "127.0.0.2")

    async def main() -> None:
        async with running_server(settings):
            assert await asyncio.to_thread(status, f"http://127.0.0.2:{port}/readyz") == 200
            with pytest.raises(urllib.error.URLError):
                await asyncio.to_thread(status, f"http://127.0.0.1:{port}/metrics")

    asyncio.run(main())


def test_stream_token_options(tmp_path: Path) -> None:
    from gateway.cli import build_parser
    from gateway.client import _token

    parser = build_parser()
    path = tmp_path / "token"
    path.write_text(f"{STATIC}\nignored second line\n")
    assert _token(parser.parse_args(["stream", "a.wav", "--token-file", str(path)]), parser) == STATIC
    assert _token(parser.parse_args(["stream", "a.wav", "--token", STATIC]), parser) == STATIC
    assert _token(parser.parse_args(["stream", "a.wav"]), parser) is None
    (tmp_path / "empty").write_text("\n")
    for argv in (
        ["--token-file", str(tmp_path / "empty")],
        ["--token-file", str(tmp_path / "missing")],
        ["--token", "x", "--token-file", str(path)],
    ):
        with pytest.raises(SystemExit):
            args = parser.parse_args(["stream", "a.wav", *argv])
            _token(args, parser)
    with pytest.raises(SystemExit):
        args = parser.parse_args(["stream", "a.wav", "--mrcp", "sip:127.0.0.1:5060", "--token", STATIC])
        args.func(args, parser)
