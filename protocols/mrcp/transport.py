"""Thin asyncio TCP (and TLS) transport of the MRCPv2 server (RFC 6787 §4.2, §11).

Channels are created by the SIP side (the SDP answer names them) and registered here with
:meth:`MrcpServer.add_channel`; a request routes to its channel by Channel-Identifier, and the channel is
bound to the connection its first request came on (events of that channel go there). Timers use the
event loop's clock: after every input the channel's earliest deadline is (re)armed with ``call_at``.
When a connection closes, every channel bound to it is closed and ``on_channel_lost`` is called, so the
session owner can end the SIP dialog. No task is created per connection: asyncio protocols call in.
With a server ``ssl.SSLContext``, :meth:`MrcpServer.start_tls` opens a second listener for
``TCP/TLS/MRCPv2`` (RFC 6787 §4.2, §11); its connections serve the same channels. A message refused for
going over a limit is reported to ``on_limit`` with the limit's name.
With an allow-list, a connection from an address outside it is closed at once, before a byte is read, and
reported to ``on_forbidden``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import cast

from protocols.allowlist import NetworkAllowList
from protocols.mrcp.codec import DEFAULT_MAX_HEADERS
from protocols.mrcp.connection import MrcpServerConnection
from protocols.mrcp.errors import ChannelNotFound
from protocols.mrcp.events import ConnectionClosed, ProtocolViolation, RequestReceived
from protocols.mrcp.recognizer import Action, RecognizerChannel

__all__ = ["MrcpServer"]

_log = logging.getLogger(__name__)


class _Binding:
    __slots__ = ("channel", "connection", "timer", "timer_deadline", "tls_only")

    def __init__(self, channel: RecognizerChannel, *, tls_only: bool) -> None:
        self.channel = channel
        self.tls_only = tls_only
        self.connection: _MrcpProtocol | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_deadline: float | None = None  # what ``timer`` was armed for (uvloop rounds ``when()``)


class MrcpServer:
    """MRCP TCP listener plus the registry of live channels."""

    def __init__(
        self,
        *,
        on_actions: Callable[[str, list[Action]], None] | None = None,
        on_channel_lost: Callable[[str], None] | None = None,
        max_message_bytes: int = 1 << 20,
        max_headers: int = DEFAULT_MAX_HEADERS,
        on_limit: Callable[[str], None] | None = None,
        allowed_networks: NetworkAllowList | None = None,
        on_forbidden: Callable[[tuple[str, int]], None] | None = None,
    ) -> None:
        """Args:
        on_actions: called with (channel id, engine actions) whenever a channel produced some.
        on_channel_lost: called with the channel id when its MRCP connection closed.
        max_message_bytes: per-message limit of every connection.
        max_headers: per-message header-line limit of every connection.
        on_limit: called with the limit's name when a message is refused for going over one.
        allowed_networks: the peers that may connect; None allows every address.
        on_forbidden: called with the peer (host, port) of each connection the allow-list refused.
        """
        self._bindings: dict[str, _Binding] = {}
        self._connections: set[_MrcpProtocol] = set()
        self._server: asyncio.Server | None = None
        self._tls_server: asyncio.Server | None = None
        self._on_actions = on_actions
        self._on_channel_lost = on_channel_lost
        self._on_limit = on_limit
        self.max_message_bytes = max_message_bytes
        self.max_headers = max_headers
        self.allowed_networks = allowed_networks
        self._on_forbidden = on_forbidden

    @property
    def port(self) -> int:
        """The bound TCP port (after ``start``)."""
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def tls_port(self) -> int | None:
        """The bound TLS port (after ``start_tls``), or None."""
        if self._tls_server is None:
            return None
        port: int = self._tls_server.sockets[0].getsockname()[1]
        return port

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (port 0 picks a free one)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _MrcpProtocol(self), host, port)

    async def start_tls(self, host: str, port: int, context: ssl.SSLContext) -> None:
        """Listen for MRCP over TLS on ``host:port`` (port 0 picks a free one)."""
        loop = asyncio.get_running_loop()
        self._tls_server = await loop.create_server(lambda: _MrcpProtocol(self), host, port, ssl=context)

    async def aclose(self) -> None:
        """Stop listening, close every connection and cancel every timer."""
        servers = [s for s in (self._server, self._tls_server) if s is not None]
        for server in servers:
            server.close()
        for protocol in list(self._connections):
            protocol.abort()
        for channel_id in list(self._bindings):
            self.remove_channel(channel_id)
        for server in servers:
            await server.wait_closed()
        self._server = self._tls_server = None

    def add_channel(self, channel: RecognizerChannel, *, tls_only: bool = False) -> None:
        """Register a channel negotiated in SDP; ``tls_only`` (negotiated as ``TCP/TLS/MRCPv2``): requests
        for it on a plain TCP connection are answered as for an unknown channel (405), so the TLS
        negotiation cannot be sidestepped."""
        self._bindings[channel.channel_id] = _Binding(channel, tls_only=tls_only)

    def remove_channel(self, channel_id: str) -> None:
        """Forget a channel (session over): its recognition stops and its timer is cancelled."""
        binding = self._bindings.pop(channel_id, None)
        if binding is None:
            return
        if binding.timer is not None:
            binding.timer.cancel()
        binding.channel.close()
        self._dispatch_actions(binding)

    def channel(self, channel_id: str) -> RecognizerChannel | None:
        """The live channel with this id, if any."""
        binding = self._bindings.get(channel_id)
        return None if binding is None else binding.channel

    @property
    def channel_count(self) -> int:
        """Channels registered now."""
        return len(self._bindings)

    def flush(self, channel_id: str) -> None:
        """Send what the channel produced and re-arm its timer; call after feeding it evidence."""
        binding = self._bindings.get(channel_id)
        if binding is None:
            return
        if binding.connection is not None:
            for message in binding.channel.messages_to_send():
                binding.connection.connection.send(message)
            binding.connection.write_pending()
        else:
            binding.channel.messages_to_send()
        self._dispatch_actions(binding)
        self._arm(binding)

    def now(self) -> float:
        """The clock every channel of this server runs on."""
        return asyncio.get_running_loop().time()

    def _dispatch_actions(self, binding: _Binding) -> None:
        actions = binding.channel.actions_to_take()
        if actions and self._on_actions is not None:
            self._on_actions(binding.channel.channel_id, actions)

    def _arm(self, binding: _Binding) -> None:
        deadline = binding.channel.get_timer()
        # Every RTP frame flushes its channel (50 a second per call): keep a timer that is already right
        # rather than cancel and re-create it (the event loop's heap would fill with cancelled handles).
        if binding.timer is not None and deadline is not None and binding.timer_deadline == deadline:
            return
        if binding.timer is not None:
            binding.timer.cancel()
            binding.timer = None
        if deadline is not None:
            loop = asyncio.get_running_loop()
            binding.timer = loop.call_at(deadline, self._fire, binding.channel.channel_id)
            binding.timer_deadline = deadline

    def _fire(self, channel_id: str) -> None:
        binding = self._bindings.get(channel_id)
        if binding is None:
            return
        binding.timer = None
        binding.channel.handle_timer(self.now())
        self.flush(channel_id)

    def _handle_request(self, protocol: _MrcpProtocol, event: RequestReceived) -> None:
        request = event.request
        channel_id = request.channel_id or ""
        binding = self._bindings.get(channel_id)
        if binding is None or (binding.tls_only and not protocol.tls):
            protocol.connection.send_error(request, ChannelNotFound(f"no channel {channel_id[:80]!r}"))
            return
        binding.connection = protocol
        protocol.channel_ids.add(channel_id)
        binding.channel.handle_request(request, self.now())
        self.flush(channel_id)

    def _connection_lost(self, protocol: _MrcpProtocol) -> None:
        self._connections.discard(protocol)
        for channel_id in protocol.channel_ids:
            binding = self._bindings.get(channel_id)
            if binding is not None and binding.connection is protocol:
                binding.connection = None
                binding.channel.close()
                self._dispatch_actions(binding)
                if binding.timer is not None:
                    binding.timer.cancel()
                    binding.timer = None
                if self._on_channel_lost is not None:
                    self._on_channel_lost(channel_id)


class _MrcpProtocol(asyncio.Protocol):
    def __init__(self, server: MrcpServer) -> None:
        self.server = server
        self.connection = MrcpServerConnection(
            max_message_bytes=server.max_message_bytes, max_headers=server.max_headers
        )
        self.channel_ids: set[str] = set()
        self.transport: asyncio.Transport | None = None
        self.tls = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it: no isinstance check.
        self.transport = cast(asyncio.Transport, transport)
        self.tls = transport.get_extra_info("ssl_object") is not None
        allowed = self.server.allowed_networks
        if allowed is not None:
            peer = transport.get_extra_info("peername")
            host, port = (str(peer[0]), int(peer[1])) if peer else ("", 0)
            if not allowed.allows(host):
                _log.debug("MRCP connection from %s refused: address not allowed", host)
                self.transport.abort()
                if self.server._on_forbidden is not None:
                    self.server._on_forbidden((host, port))
                return
        self.server._connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.connection.receive_data(data)
        self._process()

    def eof_received(self) -> bool | None:
        self.connection.receive_data(b"")
        self._process()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._connection_lost(self)

    def _process(self) -> None:
        while (event := self.connection.next_event()) is not None:
            if isinstance(event, RequestReceived):
                try:
                    self.server._handle_request(self, event)
                except Exception:  # a bug of ours must not kill the other channels of this connection
                    _log.exception("MRCP request failed")
            elif isinstance(event, ProtocolViolation):
                _log.info("MRCP protocol violation: %s", event.error)
                if event.error.limit is not None and self.server._on_limit is not None:
                    self.server._on_limit(event.error.limit)
            elif isinstance(event, ConnectionClosed):
                break
        self.write_pending()
        if self.connection.closed and self.transport is not None:
            self.transport.close()

    def write_pending(self) -> None:
        data = self.connection.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
