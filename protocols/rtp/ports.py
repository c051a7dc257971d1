"""RTP port allocation from a configured range (even ports for RTP, the odd neighbour for RTCP, RFC 3550
§11), released when the session ends. Sans-I/O: the transport binds and reports ports it could not bind."""

from __future__ import annotations

from typing import ClassVar

from protocols.errors import OverloadedError

__all__ = ["PortAllocator", "PortsExhausted"]


class PortsExhausted(OverloadedError):
    """Every RTP port of the range is in use: the session is refused with 503 + Retry-After."""

    code: ClassVar[str] = "rtp_ports_exhausted"


class PortAllocator:
    """Hands out even ports of ``[low, high]`` round-robin, so a just-released port rests a while."""

    def __init__(self, low: int, high: int) -> None:
        """Raises:
        ValueError: an empty or invalid range.
        """
        first = low + (low % 2)
        if not 0 < low <= high <= 65535 or first + 1 > high:
            raise ValueError(f"RTP port range {low}-{high} holds no even/odd port pair")
        self._ports = list(range(first, high, 2))
        self._next = 0
        self._used: set[int] = set()

    @property
    def in_use(self) -> int:
        """Ports allocated now (tests count them back to zero)."""
        return len(self._used)

    @property
    def capacity(self) -> int:
        """How many sessions the range can hold."""
        return len(self._ports)

    def allocate(self) -> int:
        """An even free port.

        Raises:
            PortsExhausted: none left.
        """
        for offset in range(len(self._ports)):
            port = self._ports[(self._next + offset) % len(self._ports)]
            if port not in self._used:
                self._next = (self._next + offset + 1) % len(self._ports)
                self._used.add(port)
                return port
        raise PortsExhausted(f"all {len(self._ports)} RTP ports are in use")

    def release(self, port: int) -> None:
        """Give a port back (unknown ports are ignored, so release is idempotent)."""
        self._used.discard(port)
