"""Thin asyncio UDP transport of one RTP session around :class:`RtpReceiver`.

``open_rtp_endpoint`` allocates a port from the range, binds it (skipping ports another process holds)
and delivers every receiver event to ``on_event``; ``close`` unbinds, cancels the timer and releases
the port. No task is created: the datagram protocol and one timer handle call in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from protocols.rtp.connection import RtpReceiver, RtpReceiverConfig
from protocols.rtp.events import RtpEvent
from protocols.rtp.ports import PortAllocator, PortsExhausted

__all__ = ["RtpEndpoint", "open_rtp_endpoint"]


class RtpEndpoint(asyncio.DatagramProtocol):
    """One bound RTP port feeding one receiver."""

    def __init__(self, config: RtpReceiverConfig, on_event: Callable[[RtpEvent], None]) -> None:
        self.receiver = RtpReceiver(config, asyncio.get_running_loop().time())
        self.on_event = on_event
        self.port = 0
        self._allocator: PortAllocator | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.receiver.receive_datagram(data, (str(addr[0]), int(addr[1])), asyncio.get_running_loop().time())
        self._deliver()

    def _deliver(self) -> None:
        while (event := self.receiver.next_event()) is not None:
            self.on_event(event)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.receiver.get_timer()
        if deadline is not None and self._transport is not None:
            self._timer = asyncio.get_running_loop().call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self.receiver.handle_timer(asyncio.get_running_loop().time())
        self._deliver()

    def close(self) -> None:
        """Unbind, flush what the jitter buffer holds, and release the port."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None
            self.receiver.flush()
            while (event := self.receiver.next_event()) is not None:
                self.on_event(event)
        if self._allocator is not None:
            self._allocator.release(self.port)
            self._allocator = None


async def open_rtp_endpoint(
    host: str, allocator: PortAllocator, config: RtpReceiverConfig, on_event: Callable[[RtpEvent], None]
) -> RtpEndpoint:
    """Bind a free port of the allocator's range.

    Raises:
        PortsExhausted: no port of the range could be allocated and bound.
    """
    loop = asyncio.get_running_loop()
    unbindable: list[int] = []
    try:
        for _ in range(allocator.capacity):
            port = allocator.allocate()
            try:
                transport, endpoint = await loop.create_datagram_endpoint(
                    lambda: RtpEndpoint(config, on_event), local_addr=(host, port)
                )
            except OSError:
                unbindable.append(port)  # held by another process: skip it for this session
                continue
            endpoint.port = port
            endpoint._allocator = allocator
            endpoint._transport = transport
            endpoint._deliver()
            return endpoint
    finally:
        for port in unbindable:
            allocator.release(port)
    raise PortsExhausted("no RTP port of the range could be bound")
