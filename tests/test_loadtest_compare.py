"""``python -m loadtest compare``: WebSocket, gRPC and MRCP sessions against one real server on loopback
(the small random model, thread runner), tiny N: every protocol is searched in interleaved rounds, on the
same audio, with partial latency measured the same way, and the table and JSON come out. Not a benchmark."""

from __future__ import annotations

import asyncio
import json
import random
import wave
from pathlib import Path

import pytest

from loadtest.__main__ import main
from loadtest.compare import parse_protocols, round_order
from tests.wsharness import free_port, noise_pcm, running_server, settings_for

pytestmark = pytest.mark.timeout(120)


def test_round_order_rotates_and_protocols_parse() -> None:
    assert [round_order(["websocket", "grpc", "mrcp"], r) for r in range(4)] == [
        ["websocket", "grpc", "mrcp"],
        ["grpc", "mrcp", "websocket"],
        ["mrcp", "websocket", "grpc"],
        ["websocket", "grpc", "mrcp"],
    ]
    assert parse_protocols(" WebSocket,mrcp ") == ("websocket", "mrcp")
    for bad in ("", "websocket,websocket", "sip"):
        with pytest.raises(ValueError, match="--protocols"):
            parse_protocols(bad)


def test_compare_three_protocols_on_one_server(
    chatty_checkpoint: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    audio = tmp_path / "audio"
    audio.mkdir()
    for i in range(2):
        with wave.open(str(audio / f"utt{i}.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(8000)
            w.writeframes(noise_pcm(1.2, seed=i).tobytes())
    grpc_port, sip_port = free_port(), free_port()
    low = random.randrange(30000, 60000, 2)
    settings = settings_for(
        chatty_checkpoint,
        "--grpc-port",
        str(grpc_port),
        "--sip-port",
        str(sip_port),
        "--mrcp-port",
        "0",
        "--rtp-ports",
        f"{low}-{low + 99}",
    )
    out = tmp_path / "compare.json"

    async def run() -> int:
        async with running_server(settings) as srv:
            return await asyncio.to_thread(
                main,
                [
                    "compare",
                    "--url",
                    srv.ws_url,
                    "--grpc-url",
                    f"grpc://127.0.0.1:{grpc_port}",
                    "--sip-url",
                    f"sip:127.0.0.1:{sip_port}",
                    "--audio-dir",
                    str(audio),
                    "--processes",
                    "1",
                    "--metrics-url",
                    srv.metrics_url + "/metrics",
                    "--duration-s",
                    "2",
                    "--start",
                    "1",
                    "--max-streams",
                    "2",
                    "--p99-ms",
                    "5000",
                    "--cooldown-s",
                    "0",
                    "--out",
                    str(out),
                ],
            )

    assert asyncio.run(run()) == 0
    printed = capsys.readouterr().out
    assert "largest N with partial p99 <= 5000 ms" in printed
    report = json.loads(out.read_text())
    assert report["schema"] == "xlgate.loadtest.compare/1"
    assert [row["protocol"] for row in report["summary"]] == ["websocket", "grpc", "mrcp"]
    rounds: dict[int, list[tuple[str, int]]] = {}
    for protocol, result in report["protocols"].items():
        assert result["max_streams"] == 2, (protocol, [t["reasons"] for t in result["trials"]])
        for trial in result["trials"]:
            assert trial["passed"], (protocol, trial["reasons"])
            rounds.setdefault(trial["round"], []).append((protocol, trial["streams"]))
        best = result["best"]
        partial = best["latency_ms"]["partial"]
        assert partial["count"] > 0 and 0 < partial["p99_ms"] < 5000, (protocol, partial)
        assert best["overruns"]["count"] == 0 and best["errors"]["total"] == 0, (protocol, best["errors"])
        assert best["counts"]["sessions_completed"] >= 2
    # Two rounds (N = 1, then 2), each running every protocol at the same N.
    assert sorted(rounds) == [0, 1]
    assert sorted(rounds[0]) == [("grpc", 1), ("mrcp", 1), ("websocket", 1)]
    assert sorted(rounds[1]) == [("grpc", 2), ("mrcp", 2), ("websocket", 2)]
    mrcp = report["protocols"]["mrcp"]["best"]["latency_ms"]
    assert mrcp["start_of_input"]["count"] > 0 and mrcp["recognition_complete"]["count"] > 0
    assert report["protocols"]["websocket"]["best"]["latency_ms"]["start_of_input"]["count"] == 0
    assert report["summary"][0]["of_websocket"] == 1.0
