"""protocols/audio stays sans-I/O: no module imports asyncio, socket or time."""

from __future__ import annotations

import ast
from pathlib import Path

import protocols.audio

FORBIDDEN = {"asyncio", "socket", "time", "selectors", "threading"}


def test_no_io_or_clock_imports() -> None:
    package_dir = Path(protocols.audio.__file__).parent
    sources = sorted(package_dir.glob("*.py"))
    assert sources
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{source.name} imports {name}"
