"""The native WebSocket protocol v1 over a real loopback socket, against the real server and engine."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from protocols.audio.g711 import alaw_encode, mulaw_encode
from tests.wsharness import client, collect, noise_pcm, running_server, send_audio, settings_for

pytestmark = pytest.mark.timeout(120)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def start_msg(**kw: Any) -> str:
    return json.dumps({"type": "start", "sample_rate_hz": 8000, "encoding": "pcm_s16le", "channels": 1, **kw})


def results(msgs: list[dict[str, Any]], kind: str | None = None) -> list[dict[str, Any]]:
    return [m for m in msgs if m["type"] in ((kind,) if kind else ("partial", "final"))]


def check_result_invariants(msgs: list[dict[str, Any]], audio_s: float) -> None:
    seqs = [m["seq"] for m in results(msgs)]
    assert seqs == list(range(len(seqs)))
    last_end = 0
    for m in results(msgs):
        assert 0 <= m["start_ms"] <= m["end_ms"] <= m["audio_end_ms"] <= audio_s * 1000 + 1
        assert m["audio_end_ms"] >= last_end
        last_end = m["audio_end_ms"]
        if m["type"] == "partial":
            assert 0 <= m["stable_words"] <= len(m["text"].split())
        else:
            assert "stable_words" not in m


def check_settled_prefixes(msgs: list[dict[str, Any]]) -> int:
    """Greedy decoding: the settled words of a partial start every later result of its utterance.
    Returns how many settled words were checked (so a caller can insist the check was not vacuous)."""
    checked = 0
    settled: dict[int, list[str]] = {}
    for m in results(msgs):
        words = m["text"].split()
        prefix = settled.get(m["channel"], [])
        assert words[:len(prefix)] == prefix, (prefix, m)
        checked += len(prefix)
        if m["type"] == "final":
            settled.pop(m["channel"], None)
        else:
            settled[m["channel"]] = words[:m["stable_words"]]
    return checked


def test_partials_keep_a_settled_prefix_and_a_changing_tail(wordy_checkpoint: str) -> None:
    async def main() -> None:
        async with running_server(settings_for(wordy_checkpoint)) as srv:
            async with client(srv.ws_url) as ws:
                await ws.send(start_msg(endpointing={"silence_ms": 600}))
                assert json.loads(await ws.recv())["type"] == "ready"
                await send_audio(ws, noise_pcm(4.0, seed=3))
                await ws.send(json.dumps({"type": "stop"}))
                msgs = await collect(ws)
        check_result_invariants(msgs, 4.0)
        partials = results(msgs, "partial")
        assert max(m["stable_words"] for m in partials) >= 2, partials
        assert check_settled_prefixes(msgs) >= 5

    run(main())


@pytest.mark.parametrize("runner", ["thread", "process"])
def test_happy_path_mono_pcm(chatty_checkpoint: str, runner: str) -> None:
    async def main() -> None:
        async with running_server(settings_for(chatty_checkpoint, "--runner", runner)) as srv:
            async with client(srv.ws_url) as ws:
                await ws.send(start_msg(client_ref="call-42"))
                ready = json.loads(await ws.recv())
                assert ready["type"] == "ready" and ready["client_ref"] == "call-42" and ready["session_id"]
                pcm = noise_pcm(3.0)
                await send_audio(ws, pcm)
                await ws.send(json.dumps({"type": "stop"}))
                msgs = await collect(ws)
                assert msgs[-1] == {"type": "end"}
                await ws.wait_closed()
                assert ws.close_code == 1000
            assert results(msgs, "partial"), "interim results were asked for"
            finals = results(msgs, "final")
            assert finals and finals[-1]["audio_end_ms"] == 3000
            assert all(m["channel"] == 0 for m in results(msgs))
            assert "words" in finals[0] and 0 <= finals[0]["confidence"] <= 1
            check_result_invariants(msgs, 3.0)
            status, body = srv.http_get("/metrics")
            assert status == 200
            assert 'xlgate_partial_result_latency_seconds_count{protocol="websocket"}' in body
            count = [ln for ln in body.splitlines()
                     if ln.startswith('xlgate_streams_ended_total{outcome="completed",protocol="websocket"}')]
            assert count and float(count[0].split()[-1]) == 1.0

    run(main())


@pytest.mark.parametrize("encoding", ["mulaw", "alaw"])
def test_g711_encodings(chatty_checkpoint: str, encoding: str) -> None:
    async def main() -> None:
        async with running_server(settings_for(chatty_checkpoint)) as srv:
            async with client(srv.ws_url) as ws:
                await ws.send(start_msg(encoding=encoding, interim_results=False))
                assert json.loads(await ws.recv())["type"] == "ready"
                pcm = noise_pcm(1.0)
                coded = (mulaw_encode if encoding == "mulaw" else alaw_encode)(pcm)
                for lo in range(0, coded.shape[0], 160):
                    await ws.send(coded[lo:lo + 160].tobytes())
                await ws.send(json.dumps({"type": "stop"}))
                msgs = await collect(ws)
            assert not results(msgs, "partial")
            assert results(msgs, "final")[-1]["audio_end_ms"] == 1000

    run(main())


def test_16khz_pcm_is_resampled(chatty_checkpoint: str) -> None:
    async def main() -> None:
        async with running_server(settings_for(chatty_checkpoint)) as srv:
            async with client(srv.ws_url) as ws:
                await ws.send(start_msg(sample_rate_hz=16000))
                assert json.loads(await ws.recv())["sample_rate_hz"] == 16000
                await send_audio(ws, noise_pcm(2.0, rate=16000), frame_samples=320)
                await ws.send(json.dumps({"type": "stop"}))
                msgs = await collect(ws)
            finals = results(msgs, "final")
            assert finals and abs(finals[-1]["audio_end_ms"] - 2000) <= 1
            check_result_invariants(msgs, 2.0)

    run(main())


def test_two_channels_are_independent_streams(chatty_checkpoint: str) -> None:
    """Each channel of a stereo stream gets exactly the transcript its audio gets alone."""

    async def transcript(ws_url: str, pcm: np.ndarray, channels: int) -> dict[int, str]:
        async with client(ws_url) as ws:
            await ws.send(start_msg(channels=channels, interim_results=False,
                                    endpointing={"enabled": False}))
            assert json.loads(await ws.recv())["type"] == "ready"
            await send_audio(ws, pcm, frame_samples=160 * channels)
            await ws.send(json.dumps({"type": "stop"}))
            msgs = await collect(ws)
        out: dict[int, str] = {}
        for m in results(msgs, "final"):
            out[m["channel"]] = (out.get(m["channel"], "") + " " + m["text"]).strip()
        return out

    async def main() -> None:
        agent, customer = noise_pcm(2.0, seed=1), noise_pcm(2.0, seed=2)
        stereo = np.stack([agent, customer], axis=1).reshape(-1)
        async with running_server(settings_for(chatty_checkpoint)) as srv:
            both = await transcript(srv.ws_url, stereo, 2)
            alone0 = await transcript(srv.ws_url, agent, 1)
            alone1 = await transcript(srv.ws_url, customer, 1)
        assert set(both) == {0, 1}
        assert both[0] == alone0[0]
        assert both[1] == alone1[0]
        assert both[0] != both[1]

    run(main())


def test_bad_input_rules(chatty_checkpoint: str) -> None:
    """Every non-fatal rule: an error message, and the stream goes on and still delivers its results."""

    async def main() -> None:
        async with running_server(settings_for(chatty_checkpoint)) as srv:
            async with client(srv.ws_url) as ws:
                await ws.send(b"\x00\x01")  # audio before start
                assert json.loads(await ws.recv())["code"] == "audio_before_start"
                await ws.send("{not json")
                assert json.loads(await ws.recv())["code"] == "invalid_json"
                await ws.send(start_msg(sample_rate=8000))  # unknown field: start refused, may retry
                err = json.loads(await ws.recv())
                assert err["code"] == "unknown_field" and "sample_rate" in err["message"]
                await ws.send(start_msg(encoding="opus"))
                assert json.loads(await ws.recv())["code"] == "unsupported_encoding"
                await ws.send(json.dumps({"type": "dance"}))
                assert json.loads(await ws.recv())["code"] == "unknown_message"
                await ws.send(start_msg())
                assert json.loads(await ws.recv())["type"] == "ready"
                await send_audio(ws, noise_pcm(1.0))
                await ws.send(b"\x01\x02\x03")  # odd byte count for 16-bit audio
                msgs = await collect(ws, until="error")
                assert msgs[-1]["code"] == "invalid_audio_length" and not msgs[-1]["fatal"]
                await send_audio(ws, noise_pcm(1.0, seed=5))
                await ws.send(json.dumps({"type": "stop"}))
                msgs = await collect(ws)
                assert msgs[-1]["type"] == "end"
                await ws.wait_closed()
                assert ws.close_code == 1000

    run(main())


def test_oversize_frame_closes_1009_without_losing_results(chatty_checkpoint: str) -> None:
    async def main() -> None:
        async with running_server(settings_for(chatty_checkpoint, "--max-frame-bytes", "4000")) as srv:
            async with client(srv.ws_url) as ws:
                await ws.send(start_msg())
                assert json.loads(await ws.recv())["type"] == "ready"
                await send_audio(ws, noise_pcm(1.0))
                first = await collect(ws, until="partial")
                assert first[-1]["type"] == "partial"
                await ws.send(b"\x00" * 4002)
                msgs = await collect(ws, until="error")
                assert msgs[-1]["code"] == "frame_too_large" and msgs[-1]["fatal"]
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
                assert ws.close_code == 1009

    run(main())


def test_second_start_is_fatal_1008(chatty_checkpoint: str) -> None:
    async def main() -> None:
        async with running_server(settings_for(chatty_checkpoint)) as srv:
            async with client(srv.ws_url) as ws:
                await ws.send(start_msg())
                assert json.loads(await ws.recv())["type"] == "ready"
                await ws.send(start_msg())
                msgs = await collect(ws, until="error")
                assert msgs[-1]["code"] == "duplicate_start"
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
                assert ws.close_code == 1008

    run(main())


def test_capacity_refuses_handshake_with_503_and_keeps_admitted_streams(chatty_checkpoint: str) -> None:
    async def main() -> None:
        async with running_server(settings_for(chatty_checkpoint, "--max-streams", "1")) as srv:
            async with client(srv.ws_url) as ws:
                await ws.send(start_msg())
                assert json.loads(await ws.recv())["type"] == "ready"
                with pytest.raises(InvalidStatus) as info:
                    async with client(srv.ws_url):
                        pass
                assert info.value.response.status_code == 503
                assert info.value.response.headers["Retry-After"].isdigit()
                await send_audio(ws, noise_pcm(1.0))
                await ws.send(json.dumps({"type": "stop"}))
                assert (await collect(ws))[-1]["type"] == "end"
            _status, body = srv.http_get("/metrics")
            assert 'xlgate_streams_rejected_total{protocol="websocket",reason="capacity"} 1.0' in body
            # A stereo start when one slot is free is refused with overloaded (1013).
            async with client(srv.ws_url) as ws:
                await ws.send(start_msg(channels=2))
                msgs = await collect(ws, until="error")
                assert msgs[-1]["code"] == "overloaded" and msgs[-1]["retry_after_ms"] > 0
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
                assert ws.close_code == 1013

    run(main())


def test_idle_stream_is_finalised_and_closed(chatty_checkpoint: str) -> None:
    async def main() -> None:
        async with running_server(settings_for(chatty_checkpoint, "--idle-timeout-ms", "1000")) as srv:
            async with client(srv.ws_url) as ws:
                await ws.send(start_msg())
                assert json.loads(await ws.recv())["type"] == "ready"
                await send_audio(ws, noise_pcm(1.0))
                msgs = await collect(ws, timeout_s=10)  # nothing more is sent
                assert msgs[-1]["type"] == "end"
                assert results(msgs, "final")
                await ws.wait_closed()
                assert ws.close_code == 1000
            _, body = srv.http_get("/metrics")
            assert 'outcome="idle_timeout"' in body
            assert 'xlgate_live_streams{protocol="websocket"} 0.0' in body

    run(main())


def test_pause_discards_audio_and_keeps_timeline(chatty_checkpoint: str) -> None:
    async def main() -> None:
        async with running_server(settings_for(chatty_checkpoint)) as srv:
            async with client(srv.ws_url) as ws:
                await ws.send(start_msg(endpointing={"enabled": False}))
                assert json.loads(await ws.recv())["type"] == "ready"
                await send_audio(ws, noise_pcm(1.0))
                await ws.send(json.dumps({"type": "pause"}))
                await send_audio(ws, noise_pcm(2.0, seed=9))
                await ws.send(json.dumps({"type": "resume"}))
                await send_audio(ws, noise_pcm(1.0, seed=3))
                await ws.send(json.dumps({"type": "stop"}))
                msgs = await collect(ws)
            finals = results(msgs, "final")
            # 4 s of audio on the stream's timeline, of which 2 s were not recognised.
            assert finals[-1]["audio_end_ms"] == 4000
            assert finals[-1]["end_ms"] > 3000
            check_result_invariants(msgs, 4.0)

    run(main())


def test_finalize_closes_utterance_and_stream_goes_on(chatty_checkpoint: str) -> None:
    async def main() -> None:
        async with running_server(settings_for(chatty_checkpoint)) as srv:
            async with client(srv.ws_url) as ws:
                await ws.send(start_msg(interim_results=False, endpointing={"enabled": False}))
                assert json.loads(await ws.recv())["type"] == "ready"
                await send_audio(ws, noise_pcm(1.6))
                await ws.send(json.dumps({"type": "finalize"}))
                first = await collect(ws, until="final")
                assert first[-1]["audio_end_ms"] == 1600
                await send_audio(ws, noise_pcm(1.6, seed=4))
                await ws.send(json.dumps({"type": "stop"}))
                rest = await collect(ws)
            second = results(rest, "final")
            assert second and second[0]["start_ms"] >= 1600

    run(main())


def test_health_probes_and_unknown_path(chatty_checkpoint: str) -> None:
    async def main() -> None:
        async with running_server(settings_for(chatty_checkpoint)) as srv:
            assert srv.http_get("/healthz")[0] == 200
            assert srv.http_get("/readyz")[0] == 200
            with pytest.raises(InvalidStatus) as info:
                async with client(srv.ws_url.replace("/v1/stream", "/v2/nope")):
                    pass
            assert info.value.response.status_code == 404

    run(main())


def test_model_failure_ends_session_with_1011_and_keeps_results(chatty_checkpoint: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.runner import ModelRunner

    original = ModelRunner.run_step
    calls = {"n": 0}

    def flaky(self: ModelRunner, items: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("simulated model failure")
        return original(self, items)

    monkeypatch.setattr(ModelRunner, "run_step", flaky)

    async def main() -> None:
        # No warm-up: it would make the counted steps (the 4th fails) the warm-up's.
        async with running_server(settings_for(chatty_checkpoint, "--no-warmup")) as srv:
            async with client(srv.ws_url) as ws:
                await ws.send(start_msg())
                assert json.loads(await ws.recv())["type"] == "ready"
                await send_audio(ws, noise_pcm(0.5))
                early = await collect(ws, until="partial")
                assert early[-1]["type"] == "partial"
                with pytest.raises(ConnectionClosed):
                    for _ in range(200):
                        await send_audio(ws, noise_pcm(0.2, seed=7))
                        await asyncio.sleep(0.01)
                msgs = []
                with pytest.raises(ConnectionClosed):
                    while True:
                        msgs.append(json.loads(await ws.recv()))
                assert ws.close_code == 1011
                errors = [m for m in msgs if m["type"] == "error"]
                assert errors and errors[-1]["code"] == "internal_error" and errors[-1]["fatal"]
                assert "simulated" not in errors[-1]["message"]  # internals are never sent to the peer
            _, body = srv.http_get("/metrics")
            assert 'xlgate_errors_total{kind="internal",protocol="websocket"}' in body
            assert 'outcome="error"' in body

    run(main())
