"""Sessions per client address: one counter shared by a protocol's listener, refusing beyond a bound.

A peer that opens session after session from one address could take every slot of the engine; this
bound keeps capacity for the others. It is per protocol (each listener owns one :class:`AddressSessions`),
counts sessions alive now (not a rate), and is off when ``max_per_address`` is 0: a PBX or SBC sends all
of its calls from one address, so only the operator knows a good bound (docs/operations.md "Limits").
Each refusal is counted in ``xlgate_limit_exceeded_total{limit="sessions_per_address"}`` and
``xlgate_streams_rejected_total{reason="per_address"}``; the protocol answers it as overload (WebSocket
HTTP 429 at the handshake, or close 1013; gRPC RESOURCE_EXHAUSTED; SIP 503 with Retry-After).
"""

from __future__ import annotations

from collections import Counter

from gateway.metrics import Metrics

__all__ = ["LIMIT", "AddressSessions", "peer_host"]

LIMIT = "sessions_per_address"
REJECT_REASON = "per_address"


def peer_host(peer: str) -> str:
    """The host part of a peer as gRPC names it (``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5``, ``unix:...``)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6" and rest.startswith("["):
        return rest[1:].split("]", 1)[0]
    if kind in {"ipv4", "ipv6"}:
        return rest.rsplit(":", 1)[0]
    return peer


class AddressSessions:
    """Live sessions per client address for one protocol (see the module docstring)."""

    def __init__(self, max_per_address: int, *, metrics: Metrics, protocol: str) -> None:
        """Args:
        max_per_address: sessions one address may hold at once; 0 = no bound.
        metrics: where refusals are counted.
        protocol: the ``protocol`` label of those counts.
        """
        if max_per_address < 0:
            raise ValueError(f"max_per_address must be >= 0, got {max_per_address}")
        self.max_per_address = max_per_address
        self.metrics = metrics
        self.protocol = protocol
        self._live: Counter[str] = Counter()

    def full(self, address: str) -> bool:
        """True when ``address`` holds its maximum already (a check only; nothing is taken)."""
        return self.max_per_address > 0 and self._live[address] >= self.max_per_address

    def acquire(self, address: str) -> bool:
        """Take a session for ``address``; False (and the refusal counted) when it holds its maximum."""
        if self.full(address):
            self.refused()
            return False
        self._live[address] += 1
        return True

    def release(self, address: str) -> None:
        """Give back a session taken with :meth:`acquire`."""
        self._live[address] -= 1
        if self._live[address] <= 0:
            del self._live[address]

    def refused(self) -> None:
        """Count one refusal (also for a refusal decided by :meth:`full` before a session exists)."""
        self.metrics.limit_exceeded.labels(self.protocol, LIMIT).inc()
        self.metrics.streams_rejected.labels(self.protocol, REJECT_REASON).inc()

    def live(self, address: str) -> int:
        """Sessions ``address`` holds now."""
        return self._live[address]
