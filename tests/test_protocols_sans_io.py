"""Everything under protocols/ is sans-I/O: only transport.py files may import asyncio, socket or time,
and protocols/ imports nothing of ours from outside protocols/."""

from __future__ import annotations

import ast
from pathlib import Path

import protocols

FORBIDDEN = {"asyncio", "socket", "time", "selectors", "threading"}
OURS_OUTSIDE = {"gateway", "streaming_model", "triton_kernels", "loadtest"}


def _imports(source: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append(node.module or "")
    return names


def test_only_transports_do_io_and_nothing_imports_the_gateway() -> None:
    root = Path(protocols.__file__).parent
    sources = sorted(root.rglob("*.py"))
    assert any(s.parent.name == "mrcp" for s in sources)
    for source in sources:
        for name in _imports(source):
            top = name.split(".")[0]
            assert top not in OURS_OUTSIDE, f"{source} imports {name}"
            if source.name != "transport.py":
                assert top not in FORBIDDEN, f"{source.relative_to(root)} imports {name}"
