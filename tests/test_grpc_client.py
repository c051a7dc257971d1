"""`xlgate stream --grpc` against a real server: a stereo WAV file over loopback gRPC, results printed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from gateway.audio_files import write_wav
from tests.grpcharness import grpc_settings_for, running_grpc
from tests.test_client import _run_client
from tests.wsharness import free_port, noise_pcm

pytestmark = pytest.mark.timeout(120)


def test_stream_grpc_prints_partials_and_finals(chatty_checkpoint: str, tmp_path: Path) -> None:
    wav = tmp_path / "call.wav"
    left, right = noise_pcm(1.5, rate=16000, seed=1), noise_pcm(1.5, rate=16000, seed=2)
    write_wav(wav, [left.astype(np.float32) / 32768, right.astype(np.float32) / 32768], 16000)

    async def main() -> None:
        async with running_grpc(grpc_settings_for(chatty_checkpoint)) as g:
            rc, out, err = await _run_client(str(wav), "--grpc", g.target, "--speed", "0", "--json")
            assert rc == 0, err
            results = [json.loads(line)["result"] for line in out.splitlines() if '"result"' in line]
            finals = [r for r in results if r.get("isFinal")]
            assert {r.get("channel", 0) for r in finals} == {0, 1}
            assert max(float(r["audioProcessed"].rstrip("s")) for r in finals) == 1.5
            rc, out, err = await _run_client(str(wav), "--grpc", g.target, "--speed", "0")
            assert rc == 0, err
            assert [ln for ln in out.splitlines() if ln.startswith("[ch")]

    asyncio.run(main())


def test_stream_grpc_reports_an_unreachable_gateway(tmp_path: Path) -> None:
    wav = tmp_path / "ok.wav"
    write_wav(wav, [np.zeros(800, dtype=np.float32)], 8000)

    async def main() -> None:
        rc, _, err = await _run_client(str(wav), "--grpc", f"127.0.0.1:{free_port()}")
        assert rc == 1 and "UNAVAILABLE" in err, err

    asyncio.run(main())


def test_the_python_example_of_docs_grpc_runs(chatty_checkpoint: str, tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "grpc.md").read_text(encoding="utf-8")
    example = doc.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, object] = {"__name__": "docs_grpc_example"}
    exec(compile(example, "docs/grpc.md", "exec"), namespace)
    wav = tmp_path / "call.wav"
    write_wav(wav, [noise_pcm(1.0).astype(np.float32) / 32768], 8000)

    async def main() -> list[str]:
        async with running_grpc(grpc_settings_for(chatty_checkpoint)) as g:
            transcribe = namespace["transcribe"]
            return await transcribe(g.target, str(wav))  # type: ignore[operator, no-any-return]

    assert asyncio.run(main())  # the chatty model always says something
