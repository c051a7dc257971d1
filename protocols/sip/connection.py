"""The SIP server core of a media server: transactions and dialogs, sans-I/O.

Theory of operation
-------------------
``receive_message(message, flow, now)`` takes every request (and the responses to our own BYE/UPDATE);
the core answers what it can on its own and reports the rest as events (``next_event``):

* INVITE (RFC 3261 §13.3): 100 Trying at once, then :class:`InviteReceived`; the owner answers with
  ``accept(dialog_id, answer_sdp)`` (200 OK) or ``reject(dialog_id, status)``. Over UDP the 2xx is resent
  at T1, 2*T1, ... capped at T2 until the ACK arrives (§13.3.1.4); without an ACK after 64*T1 the dialog
  is ended with BYE (:data:`TerminationReason.ACK_TIMEOUT`). Non-2xx finals are resent by Timer G until
  their ACK, for at most Timer H = 64*T1 (§17.2.1). Retransmitted INVITEs get the last response again.
* ACK confirms the session (:class:`SessionConfirmed`); BYE answers 200 and ends it; CANCEL before the
  final answer gets 200 and the INVITE 487 (§9.2); unknown dialogs get 481.
* re-INVITE with an offer: :class:`ReinviteReceived`, answered like an INVITE (491 while another INVITE
  is pending, §14.2); without an offer the last answer is sent again as the offer. UPDATE without a
  body refreshes the session (RFC 4028).
* OPTIONS: 200 with Allow, Accept and Supported (PBX and load-balancer probes); 503 with Retry-After
  while not ``accepting`` or while the owner's ``available`` says it would refuse a new session (a
  draining gateway), so a balancer moves new calls elsewhere. Other methods: 405.
  ``Require`` of anything but ``timer``: 420 with Unsupported.
* Proxies on the path (RFC 3261 §12.1.1): the INVITE's Record-Route headers are copied into its 2xx, and
  our own requests in the dialog (BYE, UPDATE) carry them as Route headers, in order, and go to the flow
  the INVITE came from (the first proxy), so a record-routing proxy (Kamailio) sees them. Loose routing
  only (``;lr``), as every current proxy does.
* Session timers (RFC 4028): an INVITE that supports ``timer`` is answered with Session-Expires (its own
  value, or ``session_expires_s``) and the refresher it asked for (uac by default); below Min-SE gets 422.
  With refresher=uac the session ends with BYE if no refresh arrives before
  ``expires - min(32, expires/3)`` (§10); with refresher=uas the core refreshes with UPDATE at half time.
  An INVITE without timer support gets no Session-Expires, so a long call is never cut.
* Non-INVITE server transactions keep their response for Timer J = 64*T1 over UDP to answer
  retransmissions (§17.2.2). Our BYE/UPDATE are resent by Timer E until a final response, at most
  Timer F = 64*T1 (§17.1.2).
* ``connection_lost(connection_id)`` ends the dialogs bound to that TCP or TLS connection; ``hangup`` ends
  one from our side; while ``accepting`` is False (drain, capacity) new INVITEs get 503 with Retry-After.
* Limits (``max_message_bytes``, ``max_headers``): a datagram over them is answered 513 Message Too Large
  or 400 Too Many Headers when its header block is readable (silence otherwise); a stream transport hands
  the header block of the offending message to ``refuse_stream`` before closing the connection. Each
  refusal is reported as :class:`LimitExceeded` so the owner can count it.
* SIP over TLS (RFC 3261 §26.2): a TLS flow is a reliable stream like TCP; the Contact of a dialog that came
  over TLS names ``tls_port`` with ``;transport=tls``, and our requests in it carry ``SIP/2.0/TLS`` Vias.
* Source allow-list (``allowed_networks``): a request from an address outside it is answered
  403 Forbidden statelessly (no transaction or dialog), before anything else is looked at; an ACK, a
  response or unparseable bytes from outside get nothing. The 403 goes to the packet's source (never to a
  Via's address) and only echoes the request's own Via, From, To, Call-ID and CSeq: about the size of the
  request, so no amplification. Refused requests are reported as :class:`RequestRefused`.
* Digest authentication (``digest``, :mod:`protocols.sip.digest`): an initial INVITE without valid
  credentials is answered 401 with a SHA-256 and an MD5 challenge (a stale nonce: ``stale=true``),
  before any other check, and reported as :class:`RequestRefused`; the client's retry with
  ``Authorization`` goes on as usual. Requests inside a dialog, CANCEL, ACK and OPTIONS are not
  challenged (RFC 3261 §22.1: CANCEL and ACK cannot be; in-dialog requests name the dialog's tags).

All timing is on the ``now`` the caller passes; ``get_timer()`` is the earliest deadline and
``handle_timer(now)`` fires what is due. Output is ``data_to_send()``: :class:`Outgoing` values.
"""

from __future__ import annotations

import enum
import re
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from protocols.allowlist import NetworkAllowList
from protocols.sip import digest
from protocols.sip.codec import (
    DEFAULT_MAX_HEADERS,
    DEFAULT_MAX_MESSAGE_BYTES,
    SipMessage,
    SipRequest,
    SipResponse,
    name_addr_tag,
    parse_message,
    parse_via,
    serialize,
)
from protocols.sip.errors import BadRequest, SipError, SipLocalError
from protocols.sip.events import (
    Flow,
    InviteReceived,
    LimitExceeded,
    Outgoing,
    ReinviteReceived,
    RequestRefused,
    SessionConfirmed,
    SessionTerminated,
    SipEvent,
    SipTransport,
    TerminationReason,
)

__all__ = ["ALLOWED_METHODS", "SipServerConfig", "SipServerCore"]

T1_S = 0.5  # RFC 3261 §17.1.1.1: RTT estimate
T2_S = 4.0  # RFC 3261 §17.1.2.2: maximum retransmit interval for non-INVITE requests and INVITE responses
ALLOWED_METHODS = ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "UPDATE", "INFO")
_MAGIC_COOKIE = "z9hG4bK"  # RFC 3261 §8.1.1.7
_CONTENT_LENGTH_LINE = re.compile(rb"(?im)^(?:content-length|l)[ \t]*:[^\r\n]*\r\n")
# ASCII digits only: str.isdigit() also accepts digits such as "²" that int() refuses.
_CSEQ_NUMBER = re.compile(r"[0-9]{1,10}")
_EXPIRES = re.compile(r"[0-9]{1,9}")
_URI = re.compile(r"[^\s<>\"]+")  # a remote target we can write into a request line (RFC 3261 §25.1)


@dataclass(frozen=True, slots=True)
class SipServerConfig:
    """Settings of the SIP core.

    Attributes:
        advertise_host: host written into Contact and our Via.
        port: our SIP port (Contact, Via).
        user_agent: the Server/User-Agent header value.
        session_expires_s: Session-Expires we propose when the INVITE names none (RFC 4028 §4: 1800 s).
        min_se_s: the smallest Session-Expires we accept (RFC 4028 §5: at least 90 s).
        retry_after_s: Retry-After of 503 answers while not accepting.
        t1_s, t2_s: RFC 3261 timers (tests shorten them).
        tls_port: our SIP-over-TLS port (Contact and Via of dialogs that came over TLS); 0 = none.
        max_message_bytes: the largest message accepted (513 beyond).
        max_headers: the most header lines a message may have (400 beyond).
        allowed_networks: the peers allowed to send requests; None allows every address.
        digest: digest authentication of initial INVITEs; None: none.
    """

    advertise_host: str
    port: int = 5060
    user_agent: str = "xlgate"
    session_expires_s: int = 1800
    min_se_s: int = 90
    retry_after_s: int = 5
    t1_s: float = T1_S
    t2_s: float = T2_S
    tls_port: int = 0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_headers: int = DEFAULT_MAX_HEADERS
    allowed_networks: NetworkAllowList | None = None
    digest: digest.DigestPolicy | None = None

    def allows(self, host: str) -> bool:
        """Whether a peer at ``host`` may talk to this server."""
        return self.allowed_networks is None or self.allowed_networks.allows(host)


class _DialogState(enum.Enum):
    EARLY = "early"  # INVITE received, not answered yet
    CONFIRMING = "confirming"  # 2xx sent, waiting for the ACK
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


@dataclass
class _InviteServerTx:
    request: SipRequest
    flow: Flow
    branch: str
    reinvite: bool
    last_response: bytes = b""
    final_status: int | None = None
    retransmit_at: float | None = None
    interval_s: float = 0.0
    give_up_at: float | None = None


@dataclass
class _ClientTx:
    request: bytes
    flow: Flow
    method: str
    dialog_id: str
    retransmit_at: float | None
    interval_s: float
    give_up_at: float


@dataclass
class _Dialog:
    dialog_id: str
    call_id: str
    local_tag: str
    remote_tag: str
    flow: Flow
    invite: SipRequest
    state: _DialogState = _DialogState.EARLY
    remote_cseq: int = 0
    local_cseq: int = 0
    invite_tx: _InviteServerTx | None = None
    last_answer: bytes = b""
    session_expires_s: int | None = None
    refresher: str = "uac"
    expires_at: float | None = None  # refresher=uac: when we give up on the refresh
    refresh_at: float | None = None  # refresher=uas: when we send UPDATE
    reported: bool = False  # InviteReceived was emitted (so SessionTerminated is owed)
    ended: bool = False


@dataclass
class _NonInviteServerTx:
    response: bytes
    flow: Flow
    expires_at: float


@dataclass
class _Outbox:
    items: list[Outgoing] = field(default_factory=list)


class SipServerCore:
    """All SIP transactions and dialogs of one server, sans-I/O."""

    def __init__(
        self,
        config: SipServerConfig,
        *,
        new_tag: Callable[[], str] | None = None,
        available: Callable[[], bool] | None = None,
    ) -> None:
        """Args:
        config: addresses, timers and session-timer policy.
        new_tag: generator of tags and branch suffixes (random by default; tests make it predictable).
        available: asked at each OPTIONS whether the owner would take a new session now (False: 503, so a
            load balancer's probe takes this server out while it drains); None: always.
        """
        self.config = config
        self.accepting = True
        self._available = available or (lambda: True)
        self._new_tag = new_tag or (lambda: secrets.token_hex(6))
        self._dialogs: dict[str, _Dialog] = {}
        self._by_call: dict[tuple[str, str], str] = {}  # (call-id, local tag) -> dialog id
        self._invite_txs: dict[str, _Dialog] = {}  # INVITE branch -> dialog (initial and re-INVITEs)
        self._non_invite: dict[tuple[str, str], _NonInviteServerTx] = {}  # (branch, method) -> response
        self._client_txs: dict[str, _ClientTx] = {}  # our branch -> BYE/UPDATE transaction
        self._events: deque[SipEvent] = deque()
        self._out: list[Outgoing] = []

    # ----------------------------------------------------------------------------------- outputs
    def next_event(self) -> SipEvent | None:
        """The next event, or None."""
        return self._events.popleft() if self._events else None

    def data_to_send(self) -> list[Outgoing]:
        """Messages to send, in order."""
        out, self._out = self._out, []
        return out

    @property
    def dialog_count(self) -> int:
        """Dialogs alive (early, confirming or confirmed)."""
        return len(self._dialogs)

    def get_timer(self) -> float | None:
        """The earliest deadline, or None."""
        deadlines: list[float] = []
        for dialog in self._dialogs.values():
            tx = dialog.invite_tx
            if tx is not None:
                deadlines += [d for d in (tx.retransmit_at, tx.give_up_at) if d is not None]
            deadlines += [d for d in (dialog.expires_at, dialog.refresh_at) if d is not None]
        for ctx in self._client_txs.values():
            deadlines += [d for d in (ctx.retransmit_at, ctx.give_up_at) if d is not None]
        deadlines += [tx.expires_at for tx in self._non_invite.values()]
        return min(deadlines) if deadlines else None

    # ----------------------------------------------------------------------------------- inputs
    def receive_datagram(self, data: bytes, flow: Flow, now: float) -> None:
        """One UDP datagram. Garbage is dropped, or answered 400 when it has a readable Via."""
        if not data.strip(b"\r\n"):
            return  # keep-alive
        try:
            message = parse_message(
                data,
                datagram=True,
                max_message_bytes=self.config.max_message_bytes,
                max_headers=self.config.max_headers,
            )
        except SipError as exc:
            if not self.config.allows(flow.remote[0]):
                return  # garbage from outside the allow-list gets no answer
            if exc.limit is not None:
                self._events.append(LimitExceeded(exc.limit, flow))
            self._answer_garbage(data[: self.config.max_message_bytes], flow, exc)
            return
        self.receive_message(message, flow, now)

    def refuse_stream(self, head: bytes, flow: Flow, error: SipError) -> None:
        """A stream transport's message could not be framed or parsed (``error``): answer it when its
        header block ``head`` is readable (the transport then closes the connection), and report a limit."""
        if error.limit is not None:
            self._events.append(LimitExceeded(error.limit, flow))
        if head:
            self._answer_garbage(head, flow, error)

    def receive_message(self, message: SipMessage, flow: Flow, now: float) -> None:
        """One parsed message from ``flow``."""
        if not self.config.allows(flow.remote[0]):
            self._forbid(message, flow)
            return
        if isinstance(message, SipResponse):
            self._receive_response(message, now)
            return
        try:
            self._validate(message)
        except SipError as exc:
            self._reply_stateless(message, flow, exc.status, exc.reason)
            return
        method = message.method.upper()
        branch = self._branch(message)
        if method == "ACK":
            self._receive_ack(message, branch, now)
            return
        if method == "CANCEL":
            self._receive_cancel(message, flow, branch, now)
            return
        if method != "INVITE":
            cached = self._non_invite.get((branch, method))
            if cached is not None:  # a retransmission: the same answer again (RFC 3261 §17.2.2)
                self._out.append(Outgoing(flow, cached.response))
                return
        if method == "INVITE":
            self._receive_invite(message, flow, branch, now)
        elif method == "BYE":
            self._receive_bye(message, flow, branch, now)
        elif method == "OPTIONS" and not (self.accepting and self._available()):
            # Load balancers probe with OPTIONS: a draining or full server tells them to go elsewhere.
            extra = (*self._capabilities(), ("Retry-After", str(self.config.retry_after_s)))
            self._answer(
                message, flow, branch, 503, "Service Unavailable", extra=extra, add_tag=True, now=now
            )
        elif method == "OPTIONS":
            self._answer(message, flow, branch, 200, "OK", extra=self._capabilities(), add_tag=True, now=now)
        elif method == "UPDATE":
            self._receive_update(message, flow, branch, now)
        elif method == "INFO":
            dialog = self._in_dialog(message)
            status, reason = (200, "OK") if dialog is not None else (481, "Call/Transaction Does Not Exist")
            self._answer(message, flow, branch, status, reason, now=now)
        else:
            allow = (("Allow", ", ".join(ALLOWED_METHODS)),)
            self._answer(message, flow, branch, 405, "Method Not Allowed", extra=allow, add_tag=True, now=now)

    def connection_lost(self, connection_id: int, now: float) -> None:
        """A TCP connection closed: its dialogs end (their signalling path is gone)."""
        for dialog in list(self._dialogs.values()):
            if dialog.flow.connection_id == connection_id and dialog.flow.transport.reliable:
                self._terminate(dialog, TerminationReason.TRANSPORT_LOST, send_bye=False, now=now)
        for key, ctx in list(self._client_txs.items()):
            if ctx.flow.connection_id == connection_id:
                del self._client_txs[key]
        for nkey, ntx in list(self._non_invite.items()):
            if ntx.flow.connection_id == connection_id:
                del self._non_invite[nkey]

    # ----------------------------------------------------------------------------------- commands
    def accept(self, dialog_id: str, answer_sdp: bytes, now: float) -> None:
        """Answer the pending INVITE (or re-INVITE) of ``dialog_id`` with 200 OK and ``answer_sdp``.

        Raises:
            SipLocalError: no INVITE of that dialog is waiting for an answer.
        """
        dialog = self._pending(dialog_id)
        tx = dialog.invite_tx
        assert tx is not None
        dialog.last_answer = answer_sdp
        extra: list[tuple[str, str]] = [
            ("Contact", self._contact(tx.flow)),
            ("Allow", ", ".join(ALLOWED_METHODS)),
            ("Supported", "timer"),
            ("Accept", "application/sdp"),
        ]
        extra += self._session_timer_headers(dialog, tx.request, now)
        extra += [("Record-Route", route) for route in tx.request.values("Record-Route")]  # RFC 3261 §12.1.1
        extra += [("Content-Type", "application/sdp"), ("Content-Disposition", "session")]
        response = self._response(tx.request, tx.flow, 200, "OK", dialog.local_tag, tuple(extra), answer_sdp)
        self._send_final(dialog, tx, response, 200, now)
        dialog.state = _DialogState.CONFIRMING

    def reject(
        self, dialog_id: str, status: int, reason: str, now: float, *, retry_after_s: int | None = None
    ) -> None:
        """Answer the pending INVITE of ``dialog_id`` with a failure (4xx-6xx).

        A rejected re-INVITE leaves the session as it was (RFC 3261 §14.2); a rejected INVITE ends it.

        Raises:
            SipLocalError: nothing pending, or ``status`` is not a failure.
        """
        if not 300 <= status <= 699:
            raise SipLocalError(f"reject needs a 3xx-6xx status, got {status}")
        dialog = self._pending(dialog_id)
        tx = dialog.invite_tx
        assert tx is not None
        extra = (("Retry-After", str(retry_after_s)),) if retry_after_s is not None else ()
        response = self._response(tx.request, tx.flow, status, reason, dialog.local_tag, extra)
        self._send_final(dialog, tx, response, status, now)
        if not tx.reinvite:
            dialog.reported = False  # the owner rejected it; it knows
            self._end_dialog(dialog)

    def hangup(self, dialog_id: str, now: float) -> None:
        """End a session from our side: BYE when confirmed (or confirming), 480 while still early."""
        dialog = self._dialogs.get(dialog_id)
        if dialog is None or dialog.ended:
            return
        if dialog.state is _DialogState.EARLY and dialog.invite_tx is not None:
            self.reject(dialog_id, 480, "Temporarily Unavailable", now)
            return
        self._terminate(dialog, TerminationReason.LOCAL_HANGUP, send_bye=True, now=now)

    def handle_timer(self, now: float) -> None:
        """Fire every due retransmission and timeout."""
        for dialog in list(self._dialogs.values()):
            tx = dialog.invite_tx
            if tx is not None:
                if tx.give_up_at is not None and tx.give_up_at <= now:
                    dialog.invite_tx = None
                    self._invite_txs.pop(tx.branch, None)
                    if tx.final_status is not None and 200 <= tx.final_status < 300 and not tx.reinvite:
                        self._terminate(dialog, TerminationReason.ACK_TIMEOUT, send_bye=True, now=now)
                    elif tx.final_status is not None and 200 <= tx.final_status < 300:
                        dialog.state = _DialogState.CONFIRMED
                    self._forget_if_done(dialog.dialog_id)
                    continue
                if tx.retransmit_at is not None and tx.retransmit_at <= now:
                    self._out.append(Outgoing(tx.flow, tx.last_response))
                    tx.interval_s = min(tx.interval_s * 2, self.config.t2_s)
                    tx.retransmit_at = now + tx.interval_s
            if dialog.expires_at is not None and dialog.expires_at <= now:
                dialog.expires_at = None
                self._terminate(dialog, TerminationReason.SESSION_EXPIRED, send_bye=True, now=now)
            elif dialog.refresh_at is not None and dialog.refresh_at <= now:
                self._send_in_dialog(dialog, "UPDATE", now)
                assert dialog.session_expires_s is not None
                dialog.refresh_at = now + dialog.session_expires_s / 2
        for branch, ctx in list(self._client_txs.items()):
            if ctx.give_up_at <= now:
                del self._client_txs[branch]
                self._forget_if_done(ctx.dialog_id)
            elif ctx.retransmit_at is not None and ctx.retransmit_at <= now:
                self._out.append(Outgoing(ctx.flow, ctx.request))
                ctx.interval_s = min(ctx.interval_s * 2, self.config.t2_s)
                ctx.retransmit_at = now + ctx.interval_s
        for key, ntx in list(self._non_invite.items()):
            if ntx.expires_at <= now:
                del self._non_invite[key]

    # ----------------------------------------------------------------------------------- requests
    def _validate(self, request: SipRequest) -> None:
        for name in ("Via", "From", "To", "Call-ID", "CSeq"):
            if request.header(name) is None:
                raise BadRequest(f"missing {name}")
        vias = request.values("Via")
        if not vias:
            raise BadRequest("empty Via")
        parse_via(vias[0])
        cseq = (request.header("CSeq") or "").split()
        if len(cseq) != 2 or not _CSEQ_NUMBER.fullmatch(cseq[0]) or cseq[1].upper() != request.method.upper():
            raise BadRequest(f"CSeq {request.header('CSeq')!r} does not match {request.method}")
        if request.method.upper() in {"INVITE", "UPDATE"}:
            # checked here, so a malformed value is answered 400 and never fails accept() later
            self._requested_expires(request)
        if request.method.upper() == "INVITE" and not _URI.fullmatch(_remote_target(request)):
            # our BYE and UPDATE are sent to this target: it must fit a request line
            raise BadRequest(f"Contact is not a usable URI: {request.header('Contact')!r:.80}")

    def _branch(self, request: SipRequest) -> str:
        via = parse_via(request.values("Via")[0])
        branch = via.branch
        if branch and branch.startswith(_MAGIC_COOKIE):
            return branch
        # RFC 2543 peers: no usable branch; key the transaction by what identifies it instead
        return f"legacy:{request.header('Call-ID')}:{request.header('CSeq')}:{via.host}:{via.port}"

    def _receive_invite(self, request: SipRequest, flow: Flow, branch: str, now: float) -> None:
        existing = self._invite_txs.get(branch)
        if existing is not None and existing.invite_tx is not None and existing.invite_tx.branch == branch:
            self._out.append(Outgoing(flow, existing.invite_tx.last_response))  # retransmitted INVITE
            return
        to_tag = name_addr_tag(request.header("To"))
        if to_tag:
            self._receive_reinvite(request, flow, branch, now)
            return
        if self.config.digest is not None and not self._authenticated(request, flow, branch, now):
            return
        unsupported = [tag for tag in request.values("Require") if tag.lower() != "timer"]
        if unsupported:
            extra = (("Unsupported", ", ".join(unsupported)),)
            self._answer(
                request, flow, branch, 420, "Bad Extension", extra=extra, add_tag=True, now=now, invite=True
            )
            return
        if not self.accepting:
            extra = (("Retry-After", str(self.config.retry_after_s)),)
            self._answer(
                request,
                flow,
                branch,
                503,
                "Service Unavailable",
                extra=extra,
                add_tag=True,
                now=now,
                invite=True,
            )
            return
        expires = self._requested_expires(request)
        if expires is not None and expires < self.config.min_se_s:
            extra = (("Min-SE", str(self.config.min_se_s)),)
            self._answer(
                request,
                flow,
                branch,
                422,
                "Session Interval Too Small",
                extra=extra,
                add_tag=True,
                now=now,
                invite=True,
            )
            return
        if not request.body:
            # Delayed offer: this server never makes the first offer.
            self._answer(
                request, flow, branch, 488, "Not Acceptable Here", add_tag=True, now=now, invite=True
            )
            return
        local_tag = self._new_tag()
        call_id = request.header("Call-ID") or ""
        dialog = _Dialog(
            dialog_id=local_tag,
            call_id=call_id,
            local_tag=local_tag,
            remote_tag=name_addr_tag(request.header("From")) or "",
            flow=flow,
            invite=request,
            remote_cseq=int((request.header("CSeq") or "0").split()[0]),
        )
        self._dialogs[local_tag] = dialog
        self._by_call[(call_id, local_tag)] = local_tag
        tx = _InviteServerTx(request, flow, branch, reinvite=False)
        dialog.invite_tx = tx
        self._invite_txs[branch] = dialog
        trying = self._response(request, flow, 100, "Trying", None, ())
        tx.last_response = trying
        self._out.append(Outgoing(self._destination(request, flow), trying))
        dialog.reported = True
        self._events.append(InviteReceived(local_tag, request, request.body, flow))

    def _receive_reinvite(self, request: SipRequest, flow: Flow, branch: str, now: float) -> None:
        dialog = self._in_dialog(request)
        if dialog is None:
            self._answer(request, flow, branch, 481, "Call/Transaction Does Not Exist", now=now, invite=True)
            return
        if dialog.invite_tx is not None or dialog.state is not _DialogState.CONFIRMED:
            self._answer(request, flow, branch, 491, "Request Pending", now=now, invite=True)
            return
        dialog.remote_cseq = int((request.header("CSeq") or "0").split()[0])
        tx = _InviteServerTx(request, flow, branch, reinvite=True)
        dialog.invite_tx = tx
        self._invite_txs[branch] = dialog
        if request.body:
            tx.last_response = self._response(request, flow, 100, "Trying", None, ())
            self._out.append(Outgoing(flow, tx.last_response))
            self._events.append(ReinviteReceived(dialog.dialog_id, request, request.body))
        else:
            self.accept(dialog.dialog_id, dialog.last_answer, now)  # a refresh: offer what we answered

    def _receive_ack(self, request: SipRequest, branch: str, now: float) -> None:
        dialog = self._invite_txs.get(branch)
        if (
            dialog is not None
            and dialog.invite_tx is not None
            and (dialog.invite_tx.final_status or 0) >= 300
        ):
            self._invite_txs.pop(branch, None)  # ACK of a non-2xx final: stop Timer G (RFC 3261 §17.2.1)
            dialog.invite_tx = None
            self._forget_if_done(dialog.dialog_id)
            return
        dialog = self._in_dialog(request)
        if dialog is None or dialog.invite_tx is None:
            return  # a late or stray ACK: nothing to do (RFC 3261 §17.2.1: absorbed)
        tx = dialog.invite_tx
        if tx.final_status is None or not 200 <= tx.final_status < 300:
            return
        self._invite_txs.pop(tx.branch, None)
        dialog.invite_tx = None
        first = dialog.state is _DialogState.CONFIRMING and not tx.reinvite
        dialog.state = _DialogState.CONFIRMED
        if first:
            self._events.append(SessionConfirmed(dialog.dialog_id))

    def _receive_cancel(self, request: SipRequest, flow: Flow, branch: str, now: float) -> None:
        dialog = self._invite_txs.get(branch)
        if dialog is None or dialog.invite_tx is None:
            self._answer(request, flow, branch, 481, "Call/Transaction Does Not Exist", now=now)
            return
        self._answer(request, flow, branch, 200, "OK", now=now, to_tag=dialog.local_tag)
        tx = dialog.invite_tx
        if tx.final_status is None and not tx.reinvite:
            response = self._response(tx.request, tx.flow, 487, "Request Terminated", dialog.local_tag, ())
            self._send_final(dialog, tx, response, 487, now)
            self._end_dialog(dialog, reason=TerminationReason.CANCELLED)

    def _receive_bye(self, request: SipRequest, flow: Flow, branch: str, now: float) -> None:
        dialog = self._in_dialog(request)
        if dialog is None:
            self._answer(request, flow, branch, 481, "Call/Transaction Does Not Exist", now=now)
            return
        self._answer(request, flow, branch, 200, "OK", now=now)
        tx = dialog.invite_tx
        if tx is not None and tx.final_status is None:
            response = self._response(tx.request, tx.flow, 487, "Request Terminated", dialog.local_tag, ())
            self._send_final(dialog, tx, response, 487, now)
        self._terminate(dialog, TerminationReason.BYE, send_bye=False, now=now)

    def _receive_update(self, request: SipRequest, flow: Flow, branch: str, now: float) -> None:
        dialog = self._in_dialog(request)
        if dialog is None:
            self._answer(request, flow, branch, 481, "Call/Transaction Does Not Exist", now=now)
            return
        if request.body:
            # Offers in UPDATE are not supported; the session stays as it is (RFC 3311 §5.2).
            self._answer(request, flow, branch, 488, "Not Acceptable Here", now=now)
            return
        extra = tuple(self._session_timer_headers(dialog, request, now))
        self._answer(
            request, flow, branch, 200, "OK", extra=(("Contact", self._contact(flow)), *extra), now=now
        )

    def _receive_response(self, response: SipResponse, now: float) -> None:
        vias = response.values("Via")
        if not vias:
            return
        try:
            branch = parse_via(vias[0]).branch or ""
        except SipError:
            return
        ctx = self._client_txs.get(branch)
        if ctx is None or response.status < 200:
            if ctx is not None:
                ctx.retransmit_at = None  # a provisional answer stops Timer E over UDP (RFC 3261 §17.1.2.2)
            return
        del self._client_txs[branch]
        self._forget_if_done(ctx.dialog_id)

    # ----------------------------------------------------------------------------------- helpers
    def _in_dialog(self, request: SipRequest) -> _Dialog | None:
        call_id = request.header("Call-ID") or ""
        local_tag = name_addr_tag(request.header("To")) or ""
        dialog_id = self._by_call.get((call_id, local_tag))
        dialog = self._dialogs.get(dialog_id) if dialog_id else None
        if (
            dialog is None
            or dialog.ended
            or dialog.remote_tag != (name_addr_tag(request.header("From")) or "")
        ):
            return None
        return dialog

    def _pending(self, dialog_id: str) -> _Dialog:
        dialog = self._dialogs.get(dialog_id)
        if dialog is None or dialog.invite_tx is None or dialog.invite_tx.final_status is not None:
            raise SipLocalError(f"dialog {dialog_id!r} has no INVITE waiting for an answer")
        return dialog

    def _requested_expires(self, request: SipRequest) -> int | None:
        value = request.header("Session-Expires")
        if value is None:
            return None
        number = value.split(";", 1)[0].strip()
        if not _EXPIRES.fullmatch(number):
            raise BadRequest(f"Session-Expires is not a number: {value[:30]!r}")
        return int(number)

    def _session_timer_headers(
        self, dialog: _Dialog, request: SipRequest, now: float
    ) -> list[tuple[str, str]]:
        supported = any(
            tag.lower() == "timer" for tag in request.values("Supported") + request.values("Require")
        )
        requested = self._requested_expires(request)
        if not supported and requested is None:
            dialog.expires_at = dialog.refresh_at = None
            dialog.session_expires_s = None
            return []
        expires = max(requested or self.config.session_expires_s, self.config.min_se_s)
        value = request.header("Session-Expires") or ""
        refresher = "uas" if "refresher=uas" in value.replace(" ", "").lower() else "uac"
        if not supported:
            refresher = "uas"  # RFC 4028 §9: a UAC without timer support cannot refresh
        dialog.session_expires_s = expires
        dialog.refresher = refresher
        if refresher == "uac":
            dialog.expires_at = now + expires - min(32.0, expires / 3)
            dialog.refresh_at = None
        else:
            dialog.refresh_at = now + expires / 2
            dialog.expires_at = None
        headers = [
            ("Session-Expires", f"{expires};refresher={refresher}"),
            ("Min-SE", str(self.config.min_se_s)),
        ]
        if supported:
            headers.insert(0, ("Require", "timer"))
        return headers

    def _capabilities(self) -> tuple[tuple[str, str], ...]:
        return (
            ("Allow", ", ".join(ALLOWED_METHODS)),
            ("Accept", "application/sdp"),
            ("Supported", "timer"),
        )

    def _contact(self, flow: Flow) -> str:
        if flow.transport is SipTransport.TLS:
            return f"<sip:{self.config.advertise_host}:{self.config.tls_port};transport=tls>"
        transport = ";transport=tcp" if flow.transport is SipTransport.TCP else ""
        return f"<sip:{self.config.advertise_host}:{self.config.port}{transport}>"

    def _top_via(self, request: SipRequest, flow: Flow) -> str:
        """The top Via with received/rport filled in (RFC 3261 §18.2.1, RFC 3581 §4)."""
        vias = request.values("Via")
        if not vias:
            raise BadRequest("no Via to answer to")
        via = parse_via(vias[0])
        params: list[str] = []
        for key, value in via.params:
            if key.lower() == "rport":
                params.append(f"rport={flow.remote[1]}")
            elif key.lower() != "received":
                params.append(key if value is None else f"{key}={value}")
        if via.host != flow.remote[0] or via.param("rport") is not None:
            params.append(f"received={flow.remote[0]}")
        port = f":{via.port}" if via.port is not None else ""
        host = f"[{via.host}]" if ":" in via.host else via.host
        return f"SIP/2.0/{via.transport} {host}{port}" + "".join(f";{p}" for p in params)

    def _response(
        self,
        request: SipRequest,
        flow: Flow,
        status: int,
        reason: str,
        to_tag: str | None,
        extra: tuple[tuple[str, str], ...],
        body: bytes = b"",
    ) -> bytes:
        vias = request.values("Via")
        headers: list[tuple[str, str]] = [("Via", self._top_via(request, flow))]
        headers += [("Via", via) for via in vias[1:]]
        to = request.header("To") or ""
        if to_tag is not None and name_addr_tag(to) is None:
            to = f"{to};tag={to_tag}"
        headers += [
            ("From", request.header("From") or ""),
            ("To", to),
            ("Call-ID", request.header("Call-ID") or ""),
            ("CSeq", request.header("CSeq") or ""),
        ]
        headers += list(extra)
        headers.append(("Server", self.config.user_agent))
        return serialize(SipResponse(status, reason, tuple(headers), body))

    def _destination(self, request: SipRequest, flow: Flow) -> Flow:
        if flow.transport.reliable:
            return flow
        vias = request.values("Via")
        if not vias:
            raise BadRequest("no Via to answer to")
        via = parse_via(vias[0])
        if via.param("rport") is not None:
            return flow  # RFC 3581 §4: back to the source address and port
        return Flow(flow.transport, (flow.remote[0], via.port or 5060), None)

    def _answer(
        self,
        request: SipRequest,
        flow: Flow,
        branch: str,
        status: int,
        reason: str,
        *,
        now: float,
        extra: tuple[tuple[str, str], ...] = (),
        add_tag: bool = False,
        to_tag: str | None = None,
        invite: bool = False,
    ) -> None:
        """A final answer in its own transaction (kept to answer retransmissions)."""
        tag = to_tag or (self._new_tag() if add_tag or status >= 300 else None)
        data = self._response(request, flow, status, reason, tag, extra)
        destination = self._destination(request, flow)
        self._out.append(Outgoing(destination, data))
        hold = 0.0 if flow.transport.reliable else 64 * self.config.t1_s
        if not invite:
            self._non_invite[(branch, request.method.upper())] = _NonInviteServerTx(
                data, destination, now + hold
            )

    def _authenticated(self, request: SipRequest, flow: Flow, branch: str, now: float) -> bool:
        """Whether an initial INVITE carries valid digest credentials; if not, it is answered 401."""
        policy = self.config.digest
        assert policy is not None
        stale = False
        # Not ``values()``: a Digest header's parameters are comma-separated within one value.
        credentials = [value for key, value in request.headers if key.lower() == "authorization"]
        if not credentials:
            reason = "missing"
        else:
            try:
                if len(credentials) > 1:
                    raise digest.DigestFailure("malformed", "more than one Authorization header")
                parsed = digest.parse_credentials(credentials[0])
                digest.verify(policy, parsed, method="INVITE", request_uri=request.uri, now=now)
                return True
            except digest.DigestFailure as exc:
                reason = exc.reason
                stale = reason == "expired"
        self._events.append(RequestRefused(flow, "INVITE", reason))
        extra = tuple(("WWW-Authenticate", value) for value in digest.challenges(policy, now, stale=stale))
        self._answer(
            request, flow, branch, 401, "Unauthorized", extra=extra, add_tag=True, now=now, invite=True
        )
        return False

    def _reply_stateless(self, request: SipRequest, flow: Flow, status: int, reason: str) -> None:
        try:
            data = self._response(request, flow, status, reason, self._new_tag(), ())
        except SipError:
            return  # not even a Via to answer to
        self._out.append(Outgoing(flow, data))

    def _forbid(self, message: SipMessage, flow: Flow) -> None:
        """A message from outside the allow-list: 403 to a request (RFC 3261 §21.4.4), nothing else."""
        if not isinstance(message, SipRequest):
            return
        method = message.method.upper()
        self._events.append(RequestRefused(flow, method, "address"))
        if method != "ACK":
            self._reply_stateless(message, flow, 403, "Forbidden")

    def _answer_garbage(self, data: bytes, flow: Flow, error: SipError) -> None:
        """The error's answer to a message that names enough to be answered (Via etc.); else silence."""
        try:
            head = data.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
            # Only the header block is answered: its Content-Length (whose body may be cut off or
            # refused) goes. The head is bounded by max_message_bytes already; reading all its headers
            # costs no more.
            head = _CONTENT_LENGTH_LINE.sub(b"", head)
            message = parse_message(head, datagram=True, max_message_bytes=len(head), max_headers=len(head))
        except SipError:
            return
        if isinstance(message, SipRequest) and message.method.upper() != "ACK":
            try:
                self._validate(message)
            except SipError:
                return
            self._reply_stateless(message, flow, error.status, error.reason)

    def _send_final(
        self, dialog: _Dialog, tx: _InviteServerTx, response: bytes, status: int, now: float
    ) -> None:
        tx.final_status = status
        tx.last_response = response
        destination = self._destination(tx.request, tx.flow)
        self._out.append(Outgoing(destination, response))
        tx.flow = destination
        if tx.flow.transport.reliable:
            tx.retransmit_at = None
        else:
            tx.interval_s = self.config.t1_s
            tx.retransmit_at = now + tx.interval_s
        tx.give_up_at = now + 64 * self.config.t1_s  # 2xx: wait for ACK; non-2xx: Timer H

    def _send_in_dialog(self, dialog: _Dialog, method: str, now: float) -> None:
        """Send BYE or UPDATE as a UAC non-INVITE transaction in ``dialog`` (RFC 3261 §12.2.1.1)."""
        dialog.local_cseq = max(dialog.local_cseq, 0) + 1
        branch = _MAGIC_COOKIE + self._new_tag()
        invite = dialog.invite
        target = _remote_target(invite)
        transport = dialog.flow.transport.value
        port = self.config.tls_port if dialog.flow.transport is SipTransport.TLS else self.config.port
        local = invite.header("To") or ""
        if name_addr_tag(local) is None:
            local = f"{local};tag={dialog.local_tag}"
        headers: list[tuple[str, str]] = [
            (
                "Via",
                f"SIP/2.0/{transport} {self.config.advertise_host}:{port};branch={branch};rport",
            ),
            ("Max-Forwards", "70"),
            ("From", local),
            ("To", invite.header("From") or ""),
            ("Call-ID", dialog.call_id),
            ("CSeq", f"{dialog.local_cseq} {method}"),
            ("User-Agent", self.config.user_agent),
        ]
        # The route set (RFC 3261 §12.1.1, §12.2.1.1): the INVITE's Record-Route, in order; the request goes
        # to the flow the INVITE came from, which is the first of them.
        headers += [("Route", route) for route in invite.values("Record-Route")]
        if method == "UPDATE" and dialog.session_expires_s is not None:
            headers += [
                ("Contact", self._contact(dialog.flow)),
                ("Session-Expires", f"{dialog.session_expires_s};refresher=uas"),
                ("Supported", "timer"),
            ]
        data = serialize(SipRequest(method, target, tuple(headers)))
        self._out.append(Outgoing(dialog.flow, data))
        reliable = dialog.flow.transport.reliable
        self._client_txs[branch] = _ClientTx(
            request=data,
            flow=dialog.flow,
            method=method,
            dialog_id=dialog.dialog_id,
            retransmit_at=None if reliable else now + self.config.t1_s,
            interval_s=self.config.t1_s,
            give_up_at=now + 64 * self.config.t1_s,
        )

    def _terminate(self, dialog: _Dialog, reason: TerminationReason, *, send_bye: bool, now: float) -> None:
        if dialog.ended:
            return
        if send_bye:
            self._send_in_dialog(dialog, "BYE", now)
        self._end_dialog(dialog, reason=reason)

    def _end_dialog(self, dialog: _Dialog, *, reason: TerminationReason | None = None) -> None:
        if reason is not None and dialog.reported:
            self._events.append(SessionTerminated(dialog.dialog_id, reason))
            dialog.reported = False
        dialog.ended = True
        dialog.state = _DialogState.TERMINATED
        dialog.expires_at = dialog.refresh_at = None
        # Keep the dialog while its INVITE transaction or our BYE still needs it (retransmissions).
        self._forget_if_done(dialog.dialog_id)

    def _forget_if_done(self, dialog_id: str) -> None:
        dialog = self._dialogs.get(dialog_id)
        if dialog is None or not dialog.ended:
            return
        tx = dialog.invite_tx
        if (
            tx is not None
            and tx.give_up_at is not None
            and tx.final_status is not None
            and tx.final_status >= 300
        ):
            return  # Timer G/H still runs for the failure answer
        if any(ctx.dialog_id == dialog_id for ctx in self._client_txs.values()):
            return
        if tx is not None:
            self._invite_txs.pop(tx.branch, None)
        del self._dialogs[dialog_id]
        self._by_call.pop((dialog.call_id, dialog.local_tag), None)


def _remote_target(invite: SipRequest) -> str:
    """Where in-dialog requests go: the INVITE's Contact URI, else its From URI (RFC 3261 §12.1.1)."""
    contact = invite.header("Contact") or invite.header("From") or ""
    if "<" in contact:
        return contact[contact.find("<") + 1 : contact.find(">")] if ">" in contact else ""
    return contact.split(";")[0].strip()
