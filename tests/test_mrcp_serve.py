"""`xlgate serve` starts the MRCP server beside the WebSocket one, and `xlgate stream --mrcp` talks to it:
two real processes over loopback (the small random model: this is about wiring, not words). The default
process runner scores the boolean grammar's phrases in the model's own process."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.test_deploy_prometheus import http_status, stop, wait_for
from tests.wsharness import free_port

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parents[1]


def metric(body: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", body, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_serve_starts_mrcp_and_stream_mrcp_gets_a_result(chatty_checkpoint: str, tmp_path: Path) -> None:
    sip_port, metrics_port = free_port(), free_port()
    low = random.randrange(30000, 60000, 2)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = tmp_path / "serve.log"
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--model", chatty_checkpoint, "--ws-port", "0",
             "--metrics-port", str(metrics_port), "--sip-port", str(sip_port), "--mrcp-port", "0",
             "--rtp-ports", f"{low}-{low + 99}", "--runner", "process",
             "--mrcp-waveform-dir", str(tmp_path / "waveforms")],
            env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        wait_for("xlgate /readyz", lambda: http_status(f"http://127.0.0.1:{metrics_port}/readyz") == 200,
                 proc=proc, log=log)
        assert (tmp_path / "waveforms").stat().st_mode & 0o777 == 0o700  # the saved-audio folder, private
        wav = tmp_path / "noise.wav"
        sf.write(wav, np.random.default_rng(0).standard_normal(8000) * 0.1, 8000, subtype="PCM_16")
        result = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "stream", "--mrcp", f"sip:127.0.0.1:{sip_port}", str(wav),
             "--speed", "2", "--grammar", "builtin:grammar/boolean"], env=env, capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        assert "Completion-Cause: 00" in result.stderr
        assert result.stdout.startswith("<?xml") and "urn:ietf:params:xml:ns:mrcpv2" in result.stdout
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
            body = response.read().decode()
        assert metric(body, "xlgate_rtp_packets_received_total") >= 50
        assert metric(body, 'xlgate_streams_started_total{protocol="mrcp"}') == 1
    finally:
        stop(proc)
    text = log.read_text()
    assert "MRCP: SIP on 127.0.0.1:" in text and "Traceback" not in text
