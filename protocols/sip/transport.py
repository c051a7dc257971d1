"""Thin asyncio transport of the SIP server: UDP and TCP on one port (and SIP over TLS on another, when
given a server ``ssl.SSLContext``), around :class:`SipServerCore`.

The transport owns sockets, the clock (the event loop's) and one timer handle; every decision is the
core's. Session decisions are delegated to a :class:`SessionHandler`: ``on_invite`` returns the SDP
answer or raises (an ``SdpError`` answers with its SIP status, an ``OverloadedError`` with 503 and
Retry-After, a ``SipError`` with its status; anything else is logged and answered 500 without
internals). Handler calls run as tasks the server owns; ``aclose`` cancels and awaits every one of them.
Source allow-list (the core's ``allowed_networks``): a UDP request from outside it is answered 403 by the
core; a TCP or TLS connection from outside is closed at once, before it is read (as MRCP's are). Both, and INVITEs
refused by digest authentication, are reported to ``on_refused`` with the core's reason.
``on_terminated`` of a dialog never runs before its ``on_invite`` has returned (a CANCEL or BYE that
arrives while the owner is still allocating waits for it), so the owner releases each session once.
A message over the core's limits is answered by the core (513 / 400) and reported to ``on_limit``; on a
stream transport the connection is then closed, since its framing is lost.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import ssl
from collections.abc import Callable
from typing import Protocol, cast

from protocols.errors import OverloadedError
from protocols.sdp.errors import SdpError
from protocols.sip.codec import StreamReader
from protocols.sip.connection import SipServerConfig, SipServerCore
from protocols.sip.errors import SipError, SipLocalError
from protocols.sip.events import (
    Flow,
    InviteReceived,
    LimitExceeded,
    ReinviteReceived,
    RequestRefused,
    SessionConfirmed,
    SessionTerminated,
    SipTransport,
    TerminationReason,
)

__all__ = ["SessionHandler", "SipServer"]

_log = logging.getLogger(__name__)


class SessionHandler(Protocol):
    """What the SIP server asks of the session owner (the MRCP adapter, or a test double)."""

    async def on_invite(self, event: InviteReceived) -> bytes:
        """Allocate the session; return the SDP answer. Raise to refuse (see the module docstring)."""
        ...

    async def on_reinvite(self, event: ReinviteReceived) -> bytes:
        """Answer a new offer in an established session; raise to keep the old one (488 etc.)."""
        ...

    async def on_confirmed(self, dialog_id: str) -> None:
        """The ACK arrived: the session is up."""
        ...

    async def on_terminated(self, dialog_id: str, reason: TerminationReason) -> None:
        """The session is over; release everything it holds."""
        ...


class SipServer:
    """SIP over UDP and TCP on one port, and over TLS on ``tls_port`` when started with a context."""

    def __init__(
        self,
        config: SipServerConfig,
        handler: SessionHandler,
        *,
        max_tasks: int = 1024,
        on_refused: Callable[[Flow, str], None] | None = None,
        on_limit: Callable[[LimitExceeded], None] | None = None,
        available: Callable[[], bool] | None = None,
    ) -> None:
        """Args:
        config: the core's configuration (``port`` 0 binds any free port; ``port`` is then updated, and
            ``tls_port`` likewise when TLS is started).
        handler: session owner.
        max_tasks: bound on concurrent handler calls; beyond it INVITEs get 503 (overload policy).
        on_limit: told of every message refused for going over a limit (the owner counts them).
        on_refused: called with the flow and reason of each request or TCP connection refused.
        available: whether the handler would take a new session now; OPTIONS is answered 503 while it
            would not (the core's ``available``: a draining owner leaves a load balancer's rotation).
        """
        self.config = config
        self.handler = handler
        self.core: SipServerCore | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp_server: asyncio.Server | None = None
        self._tcp: dict[int, _SipStream] = {}
        self._ids = itertools.count(1)
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._inviting: dict[str, asyncio.Task[None]] = {}  # dialog id -> its on_invite call
        self._max_tasks = max_tasks
        self._on_limit = on_limit
        self._tls_server: asyncio.Server | None = None
        self._on_refused = on_refused
        self._available = available

    @property
    def port(self) -> int:
        """The bound port."""
        return self.config.port

    @property
    def tls_port(self) -> int | None:
        """The bound SIP-over-TLS port, or None without TLS."""
        return self.config.tls_port if self._tls_server is not None else None

    async def start(self, host: str, *, tls: ssl.SSLContext | None = None) -> None:
        """Bind UDP and TCP on ``host:config.port``, and TLS on ``host:config.tls_port`` when ``tls`` is
        given (RFC 3261 §26.2: SIP over TLS on TCP; 0 binds any free port)."""
        loop = asyncio.get_running_loop()
        for attempt in range(20):
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _SipDatagram(self), local_addr=(host, self.config.port)
            )
            port: int = transport.get_extra_info("sockname")[1]
            try:
                self._tcp_server = await loop.create_server(lambda: _SipStream(self), host, port)
            except OSError:
                transport.close()
                if self.config.port != 0 or attempt == 19:
                    raise
                continue
            self._udp = transport
            break
        self.config = dataclasses.replace(self.config, port=port)
        if tls is not None:
            try:
                self._tls_server = await loop.create_server(
                    lambda: _SipStream(self, SipTransport.TLS), host, self.config.tls_port, ssl=tls
                )
            except BaseException:
                await self.aclose()
                raise
            tls_port: int = self._tls_server.sockets[0].getsockname()[1]
            self.config = dataclasses.replace(self.config, tls_port=tls_port)
        self.core = SipServerCore(self.config, available=self._available)

    @property
    def accepting(self) -> bool:
        """False answers new INVITEs with 503 (drain)."""
        return self.core is not None and self.core.accepting

    @accepting.setter
    def accepting(self, value: bool) -> None:
        assert self.core is not None
        self.core.accepting = value

    def hangup(self, dialog_id: str) -> None:
        """End a session from our side (BYE)."""
        assert self.core is not None
        self.core.hangup(dialog_id, self._now())
        self._pump()

    async def aclose(self) -> None:
        """Stop listening, close connections, cancel the timer and every handler task."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        for stream in list(self._tcp.values()):
            stream.abort()
        for server in (self._tcp_server, self._tls_server):
            if server is not None:
                server.close()
                await server.wait_closed()
        self._tcp_server = None
        self._tls_server = None

    @property
    def task_count(self) -> int:
        """Handler calls in flight (tests check it returns to zero)."""
        return len(self._tasks)

    # ------------------------------------------------------------------------------------- internals
    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _datagram(self, data: bytes, address: tuple[str, int]) -> None:
        if self.core is None:
            return
        try:
            self.core.receive_datagram(data, Flow(SipTransport.UDP, (address[0], address[1])), self._now())
        except Exception:  # a bug of ours must not stop the listener; the peer's retransmission may succeed
            _log.exception("SIP datagram from %s failed", address)
        self._pump()

    def _pump(self) -> None:
        core = self.core
        if core is None:
            return
        for outgoing in core.data_to_send():
            if outgoing.flow.transport is SipTransport.UDP:
                if self._udp is not None:
                    self._udp.sendto(outgoing.data, outgoing.flow.remote)
            else:
                stream = self._tcp.get(outgoing.flow.connection_id or 0)
                if stream is not None:
                    stream.write(outgoing.data)
        while (event := core.next_event()) is not None:
            if isinstance(event, LimitExceeded):
                if self._on_limit is not None:
                    self._on_limit(event)
            elif isinstance(event, RequestRefused):
                # A flood from outside must not flood the log: the owner counts every refusal anyway.
                level = logging.DEBUG if event.reason in ("address", "missing") else logging.INFO
                _log.log(
                    level, "SIP %s from %s refused: %s", event.method[:16], event.flow.remote[0], event.reason
                )
                if self._on_refused is not None:
                    self._on_refused(event.flow, event.reason)
            else:
                self._spawn(event)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = core.get_timer()
        if deadline is not None:
            self._timer = asyncio.get_running_loop().call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._timer = None
        if self.core is not None:
            self.core.handle_timer(self._now())
            self._pump()

    def _spawn(self, event: InviteReceived | ReinviteReceived | SessionConfirmed | SessionTerminated) -> None:
        if isinstance(event, InviteReceived) and len(self._tasks) >= self._max_tasks:
            assert self.core is not None
            self.core.reject(
                event.dialog_id,
                503,
                "Service Unavailable",
                self._now(),
                retry_after_s=self.config.retry_after_s,
            )
            return
        task = asyncio.get_running_loop().create_task(self._handle(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if isinstance(event, InviteReceived):
            self._inviting[event.dialog_id] = task
            task.add_done_callback(lambda _: self._inviting.pop(event.dialog_id, None))

    async def _handle(
        self, event: InviteReceived | ReinviteReceived | SessionConfirmed | SessionTerminated
    ) -> None:
        core = self.core
        assert core is not None
        try:
            if isinstance(event, SessionConfirmed):
                await self.handler.on_confirmed(event.dialog_id)
                return
            if isinstance(event, SessionTerminated):
                inviting = self._inviting.get(event.dialog_id)
                if inviting is not None:
                    # CANCEL/BYE while on_invite still runs: let it finish so the owner releases
                    # what it allocated there, exactly once, in on_terminated.
                    await asyncio.wait({inviting})
                await self.handler.on_terminated(event.dialog_id, event.reason)
                return
            try:
                if isinstance(event, InviteReceived):
                    answer = await self.handler.on_invite(event)
                else:
                    answer = await self.handler.on_reinvite(event)
            except OverloadedError as exc:
                core.reject(
                    event.dialog_id,
                    503,
                    "Service Unavailable",
                    self._now(),
                    retry_after_s=max(1, round(exc.retry_after_s)),
                )
            except SdpError as exc:
                core.reject(event.dialog_id, exc.sip_status, exc.sip_reason, self._now())
            except SipError as exc:
                core.reject(
                    event.dialog_id, exc.status if exc.status >= 300 else 500, exc.reason, self._now()
                )
            except Exception:
                _log.exception("session handler failed on %s", type(event).__name__)
                core.reject(event.dialog_id, 500, "Server Internal Error", self._now())
            else:
                core.accept(event.dialog_id, answer, self._now())
        except SipLocalError:
            pass  # the INVITE was cancelled (CANCEL, BYE, transport loss) while the handler ran
        except Exception:
            _log.exception("session handler failed on %s", type(event).__name__)
        finally:
            self._pump()

    def _stream_lost(self, stream: _SipStream) -> None:
        self._tcp.pop(stream.connection_id, None)
        if self.core is not None:
            self.core.connection_lost(stream.connection_id, self._now())
            self._pump()


class _SipDatagram(asyncio.DatagramProtocol):
    def __init__(self, server: SipServer) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.server._datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        _log.debug("SIP UDP error: %s", exc)


class _SipStream(asyncio.Protocol):
    def __init__(self, server: SipServer, kind: SipTransport = SipTransport.TCP) -> None:
        self.server = server
        self.kind = kind
        self.reader = StreamReader(
            max_message_bytes=server.config.max_message_bytes, max_headers=server.config.max_headers
        )
        self.connection_id = next(server._ids)
        self.transport: asyncio.Transport | None = None
        self.remote: tuple[str, int] = ("", 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it: no isinstance check.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.remote = (str(peer[0]), int(peer[1]))
        if not self.server.config.allows(self.remote[0]):
            _log.debug(
                "SIP %s connection from %s refused: address not allowed", self.kind.value, self.remote[0]
            )
            self.transport.abort()
            if self.server._on_refused is not None:
                self.server._on_refused(Flow(self.kind, self.remote, self.connection_id), "address")
            return
        self.server._tcp[self.connection_id] = self

    def data_received(self, data: bytes) -> None:
        core = self.server.core
        if core is None:
            return
        self.reader.feed(data)
        flow = Flow(self.kind, self.remote, self.connection_id)
        while True:
            try:
                message = self.reader.next_message()
            except SipError as exc:
                _log.info("closing SIP %s connection from %s: %s", self.kind.value, self.remote, exc)
                core.refuse_stream(self.reader.rejected_head, flow, exc)
                self.server._pump()  # the answer goes out before the close
                if self.transport is not None:
                    self.transport.close()
                return
            if message is None:
                break
            try:
                core.receive_message(message, flow, self.server._now())
            except Exception:
                _log.exception("SIP message from %s failed", self.remote)
        self.server._pump()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._stream_lost(self)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
