"""The committed gRPC stubs are what grpcio-tools makes of the committed proto (issue 11).

When this fails, run ``python -m gateway.grpc_api.codegen`` and commit the result.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.grpc_api import asr_pb2
from gateway.grpc_api.codegen import PACKAGE_DIR, PROTO_ROOT, STUB_NAMES, generate


def test_committed_stubs_match_the_proto() -> None:
    stale = [name for name, text in generate().items()
             if (PACKAGE_DIR / name).read_text(encoding="utf-8") != text]
    assert not stale, f"{stale} are stale: run `python -m gateway.grpc_api.codegen` and commit them"


def test_the_stubs_live_in_the_gateway_package() -> None:
    assert set(STUB_NAMES) <= {p.name for p in PACKAGE_DIR.iterdir()}
    assert "from gateway.grpc_api import asr_pb2" in (PACKAGE_DIR / "asr_pb2_grpc.py").read_text(encoding="utf-8")
    # Reflection and grpcurl see the proto's own path and package.
    assert asr_pb2.DESCRIPTOR.name == "xlgate/asr/v1/asr.proto"
    assert asr_pb2.DESCRIPTOR.package == "xlgate.asr.v1"


def test_buf_lint_is_clean() -> None:
    buf = shutil.which("buf") or str(Path(sys.executable).parent / "buf")
    if not Path(buf).is_file():
        pytest.skip("buf is not installed (pip install 'xlgate[dev]')")
    proc = subprocess.run([buf, "lint"], cwd=PROTO_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
