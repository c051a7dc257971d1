"""`xlgate stream` against a real server: a WAV file streamed over loopback, results printed."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from gateway.audio_files import write_wav
from tests.wsharness import noise_pcm, running_server, settings_for

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(120)


async def _run_client(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "stream", *args,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return int(proc.returncode or 0), out.decode(), err.decode()


def test_stream_wav_prints_partials_and_finals(chatty_checkpoint: str, tmp_path: Path) -> None:
    wav = tmp_path / "call.wav"
    stereo = np.stack([noise_pcm(1.5, rate=16000, seed=1), noise_pcm(1.5, rate=16000, seed=2)], axis=1)
    write_wav(wav, [stereo[:, 0].astype(np.float32) / 32768, stereo[:, 1].astype(np.float32) / 32768], 16000)

    async def main() -> None:
        async with running_server(settings_for(chatty_checkpoint)) as srv:
            rc, out, err = await _run_client(str(wav), "--ws", srv.ws_url, "--speed", "0", "--json")
            assert rc == 0, err
            msgs = [json.loads(line) for line in out.splitlines()]
            assert msgs[0]["type"] == "ready" and msgs[0]["channels"] == 2 and msgs[0]["sample_rate_hz"] == 16000
            assert msgs[-1] == {"type": "end"}
            finals = [m for m in msgs if m["type"] == "final"]
            assert {m["channel"] for m in finals} == {0, 1}
            assert max(m["audio_end_ms"] for m in finals) == 1500
            rc, out, _ = await _run_client(str(wav), "--ws", srv.ws_url, "--speed", "0")
            assert rc == 0
            lines = [ln for ln in out.splitlines() if ln.startswith("[ch")]
            assert lines and all("s" in ln.split("]")[0] for ln in lines)

    asyncio.run(main())


def test_stream_reports_refusal_and_bad_file(tmp_path: Path) -> None:
    async def main() -> None:
        rc, _, err = await _run_client(str(tmp_path / "missing.wav"), "--ws", "ws://127.0.0.1:9/v1/stream")
        assert rc == 1 and "missing.wav" in err
        wav = tmp_path / "ok.wav"
        write_wav(wav, [np.zeros(800, dtype=np.float32)], 8000)
        rc, _, err = await _run_client(str(wav), "--ws", "ws://127.0.0.1:9/v1/stream")
        assert rc == 1 and "cannot connect" in err

    asyncio.run(main())


def test_mic_without_pyaudio_says_how_to_install() -> None:
    pytest.importorskip("websockets")
    if _has_pyaudio():
        pytest.skip("pyaudio is installed here; the missing-PortAudio message is what this test checks")

    async def main() -> None:
        rc, _, err = await _run_client("--mic", "--ws", "ws://127.0.0.1:9/v1/stream")
        assert rc != 0 and "PyAudio" in err

    asyncio.run(main())


def _has_pyaudio() -> bool:
    try:
        import pyaudio  # noqa: F401
    except ImportError:
        return False
    return True
