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
from loadtest.compare import majority, parse_protocols, round_order
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


def test_majority() -> None:
    assert [majority(p, 3) for p in range(4)] == [False, False, True, True]
    assert [majority(p, 2) for p in range(3)] == [False, False, True]


def test_compare_at_fixed_counts_repeats_and_takes_the_majority(
    chatty_checkpoint: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--at 1,2 --rounds 2``: each protocol runs at each count in each round (counts ascending, protocols
    rotated); the answer is the largest count passed in a majority of rounds; an unmeetable goal gives 0."""
    audio = tmp_path / "audio"
    audio.mkdir()
    with wave.open(str(audio / "utt0.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(noise_pcm(1.2, seed=3).tobytes())
    grpc_port = free_port()
    settings = settings_for(chatty_checkpoint, "--grpc-port", str(grpc_port))
    out, out_fail = tmp_path / "at.json", tmp_path / "at-fail.json"

    def argv(out_path: Path, ws_url: str, metrics_url: str, *extra: str) -> list[str]:
        return ["compare", "--protocols", "websocket,grpc", "--url", ws_url,
                "--grpc-url", f"grpc://127.0.0.1:{grpc_port}", "--audio-dir", str(audio), "--processes", "1",
                "--metrics-url", metrics_url + "/metrics", "--duration-s", "2", "--cooldown-s", "0",
                "--out", str(out_path), *extra]

    async def run() -> tuple[int, int]:
        async with running_server(settings) as srv:
            ok = await asyncio.to_thread(main, argv(out, srv.ws_url, srv.metrics_url, "--at", "2,1",
                                                   "--rounds", "2", "--p99-ms", "5000"))
            fail = await asyncio.to_thread(main, argv(out_fail, srv.ws_url, srv.metrics_url, "--at", "1",
                                                     "--rounds", "1", "--p99-ms", "0.001"))
            return ok, fail

    assert asyncio.run(run()) == (0, 0)
    report = json.loads(out.read_text())
    order = []
    for protocol, result in report["protocols"].items():
        assert result["max_streams"] == 2, (protocol, [t["reasons"] for t in result["trials"]])
        assert result["passes"] == {"1": 2, "2": 2}
        assert result["best"]["counts"]["sessions_completed"] >= 2
        order += [(t["round"], t["streams"], protocol) for t in result["trials"]]
    assert sorted(order) == [(r, n, p) for r in (0, 1) for n in (1, 2) for p in ("grpc", "websocket")]
    assert report["summary"][1]["of_websocket"] == 1.0
    failed = json.loads(out_fail.read_text())
    for protocol, result in failed["protocols"].items():
        assert result["max_streams"] == 0 and result["best"] is None and result["passes"] == {"1": 0}, protocol
        assert any("p99" in reason for reason in result["trials"][0]["reasons"]), result["trials"][0]["reasons"]
    assert "largest N with partial p99 <= 0.001 ms" in capsys.readouterr().out


def test_compare_at_refuses_bad_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "--at", "72,x", "--audio-dir", str(tmp_path), "--out", str(tmp_path / "o.json")]) == 2
    assert "--at must be comma-separated stream counts, got '72,x'" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()
