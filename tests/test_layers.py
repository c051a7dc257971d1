"""The import layers of the house style hold (issue 9); this test is the one sans-I/O check of protocols/.

* ``protocols/`` imports nothing of ours but itself, and does no I/O: no network, clock, thread or process
  module, and no file access (recordings are read by ``gateway/audio_files.py``), except in the one thin
  ``transport.py`` of a protocol, which does its asyncio I/O (STYLE.md: events, errors, codec and connection
  are sans-I/O; the transport is the only file that touches sockets and the clock).
* ``streaming_model/`` never imports ``gateway/`` (nor the load generator or the tests); the sans-I/O
  ``protocols/`` (audio helpers) is below it and allowed.

Every import statement counts, at module level or inside a function. Known exceptions (none today) are
listed with the issue that removes them; an exception that no longer happens fails the test, so the list
cannot go stale.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"protocols", "gateway", "streaming_model", "triton_kernels", "loadtest", "tests"}

# Modules whose import means I/O, a clock or concurrency: none of them belongs in a sans-I/O protocol.
IO_MODULES = {"asyncio", "socket", "selectors", "ssl", "time", "threading", "multiprocessing", "concurrent",
              "subprocess", "http", "urllib", "websockets", "grpc", "uvloop", "soundfile"}
# Builtins and methods that touch the file system.
FILE_CALLS = {"open", "read_bytes", "read_text", "write_bytes", "write_text"}

# What a protocol's transport.py may use for its I/O (nothing of ours above protocols/ all the same).
TRANSPORT_IO = {"asyncio", "socket", "ssl", "time", "selectors"}

# (importer, imported top-level package or I/O module) -> the issue that removes it.
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}


def python_files(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


def imported_modules(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def file_calls(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name in FILE_CALLS:
                yield name


def violations(package: str, *, allowed_ours: set[str], check_io: bool) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for path in python_files(package):
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
        for module in imported_modules(tree):
            top = module.split(".")[0]
            io = check_io and top in IO_MODULES and not (path.name == "transport.py" and top in TRANSPORT_IO)
            if (top in OURS and top not in allowed_ours) or io:
                found.add((rel, top))
        if check_io:
            found.update((rel, call) for call in file_calls(tree))
    return found


@pytest.mark.parametrize(("package", "allowed_ours", "check_io"), [
    ("protocols", {"protocols"}, True),
    ("streaming_model", {"streaming_model", "triton_kernels", "protocols"}, False),
])
def test_layers(package: str, allowed_ours: set[str], check_io: bool) -> None:
    found = violations(package, allowed_ours=allowed_ours, check_io=check_io)
    known = {k for k in KNOWN_EXCEPTIONS if k[0].startswith(package + "/")}
    assert found - known == set(), "layer violations (see the module docstring)"
    assert known - found == set(), "a known exception no longer happens: drop it from KNOWN_EXCEPTIONS"


def test_the_checks_see_what_they_must() -> None:
    """The scanner itself: imports inside functions, ``from`` imports and file calls are all found."""
    tree = ast.parse("def f():\n    import asyncio\n    from gateway.engine import Engine\n"
                     "    return open('x'), Path('y').read_text()\n")
    assert set(imported_modules(tree)) == {"asyncio", "gateway.engine"}
    assert sorted(file_calls(tree)) == ["open", "read_text"]


def test_only_transports_do_io() -> None:
    """A transport.py may use asyncio; the same import anywhere else under protocols/ is a violation."""
    transports = [p for p in python_files("protocols") if p.name == "transport.py"]
    assert transports, "protocols/ has transports (SIP, MRCP, RTP)"
    for path in transports:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        assert "asyncio" in {m.split(".")[0] for m in imported_modules(tree)}
    found = violations("protocols", allowed_ours={"protocols"}, check_io=True)
    assert not {f for f in found if f[0].endswith("/transport.py") and f[1] in TRANSPORT_IO}
