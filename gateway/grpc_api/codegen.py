"""Regenerate the committed Python stubs of ``proto/xlgate/asr/v1/asr.proto``.

Run ``python -m gateway.grpc_api.codegen`` after editing the proto; ``tests/test_grpc_stubs.py`` fails
while the committed stubs differ from what this produces. grpcio-tools writes the stubs for the proto's
own path (``xlgate/asr/v1/``), whose service module imports ``xlgate.asr.v1``; they live in this package
instead (no top-level ``xlgate`` Python package), so that one import is rewritten. The descriptors keep
the proto's path, which is what server reflection and grpcurl show.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Final

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
PROTO_ROOT: Final = REPO_ROOT / "proto"
PROTO_FILE: Final = "xlgate/asr/v1/asr.proto"
PACKAGE_DIR: Final = Path(__file__).resolve().parent
STUB_NAMES: Final = ("asr_pb2.py", "asr_pb2.pyi", "asr_pb2_grpc.py")
_GENERATED_IMPORT: Final = "from xlgate.asr.v1 import asr_pb2 as "
_PACKAGE_IMPORT: Final = "from gateway.grpc_api import asr_pb2 as "


def generate() -> dict[str, str]:
    """The stubs' text by file name, generated from the proto with grpcio-tools.

    Raises:
        RuntimeError: protoc failed (its message is on stderr).
    """
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        status = protoc.main(["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", f"--python_out={tmp}",
                              f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", PROTO_FILE])
        if status != 0:
            raise RuntimeError(f"protoc failed with status {status} on {PROTO_ROOT / PROTO_FILE}")
        out_dir = Path(tmp) / Path(PROTO_FILE).parent
        stubs = {name: (out_dir / name).read_text(encoding="utf-8") for name in STUB_NAMES}
    grpc_stub = stubs["asr_pb2_grpc.py"]
    if _GENERATED_IMPORT not in grpc_stub:
        raise RuntimeError(f"asr_pb2_grpc.py no longer imports {_GENERATED_IMPORT!r}: update codegen.py")
    stubs["asr_pb2_grpc.py"] = grpc_stub.replace(_GENERATED_IMPORT, _PACKAGE_IMPORT)
    return stubs


def main() -> int:
    for name, text in generate().items():
        (PACKAGE_DIR / name).write_text(text, encoding="utf-8")
        print(f"wrote {PACKAGE_DIR / name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
