"""Running a command's coroutine on the chosen event loop: the one helper every command shares.

It lives here, not in :mod:`gateway.cli`, so that the commands' modules (:mod:`gateway.client`,
:mod:`gateway.offline`) and the CLI that imports them all depend on it without importing each other.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any

from gateway.config import EventLoop

__all__ = ["run_async"]


def run_async(coro: Coroutine[Any, Any, Any], event_loop: EventLoop = EventLoop.UVLOOP) -> Any:
    """Run ``coro`` to completion on uvloop when asked and available, else on asyncio's own loop."""
    if event_loop is EventLoop.UVLOOP:
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
            print("uvloop is not installed; using asyncio's loop", file=sys.stderr)
        else:
            return uvloop.run(coro)
    return asyncio.run(coro)
