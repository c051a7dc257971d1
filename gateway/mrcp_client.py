"""xlgate's own MRCPv2 client (SIP over UDP, RTP, MRCP over TCP) on the same codecs as the server.

With a ``sips:HOST[:PORT]`` URI it runs over TLS instead (RFC 3261 §26, RFC 6787 §11): SIP over TLS on one
TCP connection (port 5061 by default) and an offer of ``TCP/TLS/MRCPv2``, so the MRCP connection is TLS
too; the server's certificate is verified against ``ssl_context`` (system CAs by default) for the URI's
host name. RTP stays plain.

For demos (``xlgate stream --mrcp sip:HOST:PORT FILE``), tests and the load generator. One
:class:`MrcpClient` is one call: :meth:`MrcpClient.connect` sends the INVITE (the offer the captured
UniMRCP client sends: one speechrecog resource, PCMU/PCMA/L16 and telephone-event) and opens the MRCP
connection; :meth:`request` sends an MRCP request and waits for its response; :meth:`next_event` returns
the server's events in order; :meth:`send_audio` paces RTP in real time; :meth:`send_dtmf` sends RFC 4733
digits; :meth:`bye` hangs up. A BYE from the server is answered and sets :attr:`hung_up`.

Through a SIP proxy (a load balancer such as Kamailio in front of several gateways): the ACK and BYE go to
the dialog's remote target (the 2xx's Contact) with the route set the proxies recorded (the 2xx's
Record-Route, reversed: RFC 3261 §12.1.2, loose routing) as Route headers; they are still sent to the URI's
address (the first proxy). Only SIP passes the proxy: the answer's MRCP and RTP addresses are the gateway's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import re
import socket
import ssl
import struct
import uuid
from dataclasses import dataclass
from typing import cast

import numpy as np
import numpy.typing as npt

from protocols.audio.g711 import alaw_encode, mulaw_encode
from protocols.errors import GatewayError
from protocols.mrcp.codec import MessageReader
from protocols.mrcp.codec import serialize as serialize_mrcp
from protocols.mrcp.events import MrcpEvent, MrcpRequest, MrcpResponse
from protocols.rtp.codec import RtpPacket, serialize_rtp
from protocols.sdp.codec import parse_sdp
from protocols.sip.codec import SipRequest, SipResponse, StreamReader, parse_message
from protocols.sip.codec import serialize as serialize_sip
from protocols.sip.digest import ALGORITHMS, response_digest

__all__ = ["CallRefused", "MrcpClient", "cmd_stream_mrcp", "parse_sip_uri", "recognize_file"]

FRAME_SAMPLES = 160  # 20 ms at 8 kHz
TELEPHONE_EVENT_PT = 101
DTMF_EVENTS = "0123456789*#ABCD"
INVITE_RETRANSMIT_S = 0.5
SIP_TIMEOUT_S = 8.0


class CallRefused(GatewayError):
    """The server answered the INVITE with a failure (503 at capacity, 488, ...)."""

    code = "call_refused"

    def __init__(self, status: int, reason: str, retry_after: str | None) -> None:
        super().__init__(f"INVITE refused: {status} {reason}")
        self.status = status
        self.reason = reason
        self.retry_after = retry_after


def parse_sip_uri(uri: str) -> tuple[str, int]:
    """``sip:HOST[:PORT]`` -> (host, port); the port defaults to 5060 (5061 for ``sips:``).

    Raises:
        ValueError: not a sip: or sips: URI.
    """
    scheme, sep, rest = uri.partition(":")
    if not sep or scheme not in {"sip", "sips"}:
        raise ValueError(f"expected sip:HOST[:PORT] or sips:HOST[:PORT], got {uri!r}")
    rest = rest.split(";", 1)[0].rsplit("@", 1)[-1]
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return rest, 5061 if scheme == "sips" else 5060
    return host, int(port)


@dataclass(frozen=True, slots=True)
class _Answer:
    mrcp_host: str
    mrcp_port: int
    channel_id: str
    rtp_host: str
    rtp_port: int
    payload_type: int
    codec: str


class _SipProtocol(asyncio.DatagramProtocol):
    def __init__(self, client: MrcpClient) -> None:
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        with contextlib.suppress(GatewayError):
            self.client._sip_received(parse_message(data, datagram=True))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable on the connected socket: nothing listens there (RFC 3261 §18.4 treats a
        # transport error as a failed request), so a waiting request fails now instead of timing out.
        self.client._sip_failed(exc)


class MrcpClient:
    """One MRCP call (see the module docstring)."""

    def __init__(
        self, uri: str, *, codec: str = "PCMU", local_host: str = "127.0.0.1",
        ssl_context: ssl.SSLContext | None = None, credentials: tuple[str, str] | None = None,
    ) -> None:
        """Args:
        uri: the server's ``sip:HOST:PORT``, or ``sips:HOST:PORT`` for SIP and MRCP over TLS.
        codec: the only audio codec offered: PCMU, PCMA or L16.
        local_host: the address our SIP and RTP sockets bind to.
        ssl_context: with ``sips:``, how the server's certificate is verified (system CAs when None).
        credentials: (username, password) answering a digest challenge to the INVITE (401).
        """
        self.credentials = credentials
        self.server = parse_sip_uri(uri)
        self.tls = uri.startswith("sips:")
        self._ssl = (ssl_context or ssl.create_default_context()) if self.tls else None
        self._sip_writer: asyncio.StreamWriter | None = None
        self._sip_task: asyncio.Task[None] | None = None
        self._codec = codec.upper()
        if self._codec not in {"PCMU", "PCMA", "L16"}:
            raise ValueError(f"codec must be PCMU, PCMA or L16, got {codec!r}")
        self.local_host = local_host
        self.call_id = uuid.uuid4().hex
        self.from_tag = uuid.uuid4().hex[:12]
        self.to_header = f"<sip:{self.server[0]}:{self.server[1]}>"
        self.cseq = random.randint(1, 1 << 20)
        self.answer: _Answer | None = None
        self.invite_response: SipResponse | None = None  # the 200 OK, once connected
        self.remote_target = f"sip:{self.server[0]}:{self.server[1]}"  # the 2xx's Contact, once connected
        self.route_set: tuple[str, ...] = ()  # the 2xx's Record-Route, reversed (RFC 3261 §12.1.2)
        self.bye_status: int | None = None  # the final status our BYE got (None: not sent, or no answer)
        self.hung_up = asyncio.Event()
        self.hung_up_by_server = False  # the server's BYE arrived (and was answered 200)
        self._sip: _SipProtocol | None = None
        self._rtp: asyncio.DatagramTransport | None = None
        self._responses: asyncio.Queue[SipResponse | OSError] = asyncio.Queue(64)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._events: asyncio.Queue[MrcpEvent | None] = asyncio.Queue(1024)
        self._pending: dict[int, asyncio.Future[MrcpResponse]] = {}
        self._read_task: asyncio.Task[None] | None = None
        self._request_id = random.randint(1, 1000)
        self._seq = random.randint(0, 0xFFFF)
        self._timestamp = random.randint(0, 0xFFFFFFFF)
        self._ssrc = random.randint(1, 0xFFFFFFFF)

    @property
    def channel_id(self) -> str:
        """The recognizer channel's id from the SDP answer."""
        assert self.answer is not None, "connect() first"
        return self.answer.channel_id

    # -- SIP ---------------------------------------------------------------------------------------------
    def _local_port(self) -> int:
        if self._sip_writer is not None:
            tls_port: int = self._sip_writer.get_extra_info("sockname")[1]
            return tls_port
        assert self._sip is not None and self._sip.transport is not None
        port: int = self._sip.transport.get_extra_info("sockname")[1]
        return port

    def _headers(self, method: str, cseq: int, *, to: str | None = None) -> list[tuple[str, str]]:
        host, port = self.local_host, self._local_port()
        transport = "TLS" if self.tls else "UDP"
        return [
            ("Via", f"SIP/2.0/{transport} {host}:{port};rport;branch=z9hG4bK{uuid.uuid4().hex[:16]}"),
            ("Max-Forwards", "70"),
            ("From", f"<sip:xlgate-client@{host}:{port}>;tag={self.from_tag}"),
            ("To", to or self.to_header),
            ("Call-ID", self.call_id),
            ("CSeq", f"{cseq} {method}"),
            ("Contact", f"<sip:{host}:{port};transport={transport.lower()}>"),
            ("User-Agent", "xlgate-mrcp-client"),
        ]

    def _offer(self, rtp_port: int) -> bytes:
        payload = {"PCMU": "0", "PCMA": "8", "L16": "96"}[self._codec]
        lines = [
            "v=0", f"o=xlgate {random.randint(1, 1 << 30)} 1 IN IP4 {self.local_host}", "s=-",
            f"c=IN IP4 {self.local_host}", "t=0 0",
            f"m=application 9 {self._mrcp_proto} 1", "a=setup:active", "a=connection:new", "a=resource:speechrecog",
            "a=cmid:1",
            f"m=audio {rtp_port} RTP/AVP {payload} {TELEPHONE_EVENT_PT}",
            f"a=rtpmap:{payload} {self._codec}/8000", f"a=rtpmap:{TELEPHONE_EVENT_PT} telephone-event/8000",
            f"a=fmtp:{TELEPHONE_EVENT_PT} 0-15", "a=sendonly", "a=ptime:20", "a=mid:1",
        ]
        return ("\r\n".join(lines) + "\r\n").encode()

    @property
    def _mrcp_proto(self) -> str:
        return "TCP/TLS/MRCPv2" if self.tls else "TCP/MRCPv2"

    def _send_sip(self, message: SipRequest | SipResponse) -> None:
        if self._sip_writer is not None:
            if not self._sip_writer.is_closing():
                self._sip_writer.write(serialize_sip(message))
            return
        assert self._sip is not None and self._sip.transport is not None
        self._sip.transport.sendto(serialize_sip(message))  # the socket is connected to the server

    def _sip_failed(self, exc: Exception) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self._responses.put_nowait(exc if isinstance(exc, OSError) else OSError(str(exc)))

    async def _read_sip_stream(self, reader: asyncio.StreamReader) -> None:
        """SIP over TLS: cut the stream into messages (RFC 3261 §18.3) and handle each."""
        framer = StreamReader()
        with contextlib.suppress(OSError, GatewayError):
            while data := await reader.read(65536):
                framer.feed(data)
                while (message := framer.next_message()) is not None:
                    self._sip_received(message)

    def _sip_received(self, message: SipRequest | SipResponse) -> None:
        if isinstance(message, SipResponse):
            with contextlib.suppress(asyncio.QueueFull):
                self._responses.put_nowait(message)
            return
        if message.method in {"BYE", "OPTIONS", "INFO", "UPDATE"}:
            headers = [(name, message.header(name) or "") for name in ("Via", "From", "To", "Call-ID", "CSeq")]
            self._send_sip(SipResponse(200, "OK", tuple(headers)))
            if message.method == "BYE":
                self.hung_up_by_server = True
                self.hung_up.set()

    async def _final_response(self, request: SipRequest) -> SipResponse:
        """Send ``request`` (retransmitted over UDP) until a final response for its CSeq arrives."""
        cseq = request.header("CSeq")
        retransmit_s = None if self.tls else INVITE_RETRANSMIT_S  # a reliable transport: sent once
        async with asyncio.timeout(SIP_TIMEOUT_S):
            while True:
                self._send_sip(request)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(retransmit_s):
                        while True:
                            response = await self._responses.get()
                            if isinstance(response, OSError):
                                raise ConnectionRefusedError(
                                    f"SIP {request.method} to {self.server[0]}:{self.server[1]}: {response}")
                            if response.header("CSeq") == cseq and response.status >= 200:
                                return response

    async def connect(self) -> None:
        """INVITE, ACK, and the MRCP connection.

        Raises:
            CallRefused: the INVITE got a failure response.
            ConnectionRefusedError: nothing listens on the server's SIP port (ICMP port unreachable).
            TimeoutError: no final response.
        """
        loop = asyncio.get_running_loop()
        if self.tls:
            reader, writer = await asyncio.open_connection(
                self.server[0], self.server[1], ssl=self._ssl, local_addr=(self.local_host, 0)
            )
            self._sip_writer = writer
            self._sip_task = loop.create_task(self._read_sip_stream(reader))
        else:
            # Connected to the server: its responses and requests come from its SIP port, and an ICMP error
            # (no server there) is reported to error_received.
            _, sip = await loop.create_datagram_endpoint(
                lambda: _SipProtocol(self), local_addr=(self.local_host, 0), remote_addr=self.server
            )
            self._sip = sip
        self._rtp, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                           local_addr=(self.local_host, 0))
        rtp_port: int = self._rtp.get_extra_info("sockname")[1]
        headers = self._headers("INVITE", self.cseq)
        headers.append(("Content-Type", "application/sdp"))
        offer = self._offer(rtp_port)
        invite = SipRequest("INVITE", f"sip:{self.server[0]}:{self.server[1]}", tuple(headers), offer)
        response = await self._final_response(invite)
        if response.status == 401 and self.credentials is not None:
            self._ack_failure(invite, response)
            self.cseq += 1
            headers = self._headers("INVITE", self.cseq)
            headers += [("Content-Type", "application/sdp"),
                        ("Authorization", self._authorization(invite.uri, response))]
            invite = SipRequest("INVITE", invite.uri, tuple(headers), offer)
            response = await self._final_response(invite)
        if response.status >= 300:
            raise CallRefused(response.status, response.reason, response.header("Retry-After"))
        self.invite_response = response
        self.to_header = response.header("To") or self.to_header
        self.route_set = tuple(reversed(response.values("Record-Route")))
        contact = response.header("Contact")
        if contact:
            self.remote_target = contact[contact.find("<") + 1:contact.find(">")] if "<" in contact \
                else contact.split(";")[0].strip()
        self._send_sip(SipRequest("ACK", self.remote_target, tuple(self._in_dialog_headers("ACK", self.cseq))))
        self.answer = self._parse_answer(response.body, self._mrcp_proto)
        self._reader, self._writer = await asyncio.open_connection(
            self.answer.mrcp_host,
            self.answer.mrcp_port,
            ssl=self._ssl,
            server_hostname=self.server[0] if self._ssl is not None else None,
        )
        self._read_task = loop.create_task(self._read_mrcp())

    def _in_dialog_headers(self, method: str, cseq: int) -> list[tuple[str, str]]:
        """Headers of a request inside the dialog: its To tag and the route set as Route headers."""
        return [*self._headers(method, cseq, to=self.to_header), *(("Route", route) for route in self.route_set)]

    def _ack_failure(self, invite: SipRequest, response: SipResponse) -> None:
        """ACK a non-2xx final answer to ``invite``: same branch, its To (RFC 3261 §17.1.1.3)."""
        headers = [(name, invite.header(name) or "") for name in ("Via", "Max-Forwards", "From", "Call-ID")]
        headers += [("To", response.header("To") or self.to_header), ("CSeq", f"{self.cseq} ACK")]
        self._send_sip(SipRequest("ACK", invite.uri, tuple(headers)))

    def _authorization(self, uri: str, challenge_response: SipResponse) -> str:
        """The ``Authorization`` answering the strongest challenge offered (SHA-256 before MD5)."""
        assert self.credentials is not None
        username, password = self.credentials
        offered: dict[str, dict[str, str]] = {}
        for key, value in challenge_response.headers:
            if key.lower() == "www-authenticate" and value.lower().startswith("digest "):
                pairs = re.findall(r'(\w+)=(?:"([^"]*)"|([^\s,]+))', value[7:])
                params = {name.lower(): quoted or bare for name, quoted, bare in pairs}
                offered.setdefault(params.get("algorithm", "MD5").upper(), params)
        algorithm = next((name for name in ALGORITHMS if name in offered), None)
        if algorithm is None:
            raise CallRefused(challenge_response.status, "no digest challenge this client can answer", None)
        params = offered[algorithm]
        cnonce, nc, qop = uuid.uuid4().hex[:16], "00000001", "auth"
        response = response_digest(algorithm=algorithm, username=username, realm=params["realm"],
                                   password=password, method="INVITE", uri=uri, nonce=params["nonce"],
                                   qop=qop, nc=nc, cnonce=cnonce)
        return (f'Digest username="{username}", realm="{params["realm"]}", nonce="{params["nonce"]}", '
                f'uri="{uri}", response="{response}", algorithm={algorithm}, qop={qop}, nc={nc}, '
                f'cnonce="{cnonce}"')

    @staticmethod
    def _parse_answer(body: bytes, proto: str = "TCP/MRCPv2") -> _Answer:
        sdp = parse_sdp(body)
        host = (sdp.connection or "IN IP4 127.0.0.1").split()[-1]
        mrcp = next((m for m in sdp.media if m.media == "application" and m.port and m.proto == proto), None)
        if mrcp is None:
            raise CallRefused(488, f"the answer accepts no {proto} channel", None)
        audio = next(m for m in sdp.media if m.media == "audio" and m.port)
        payload_type = int(audio.formats[0])
        rtpmap = {v.split()[0]: v.split()[1].split("/")[0].upper()
                  for k, v in audio.attributes if k == "rtpmap" and v}
        codec = rtpmap.get(str(payload_type), {0: "PCMU", 8: "PCMA"}.get(payload_type, "PCMU"))
        return _Answer(host, mrcp.port, mrcp.attribute("channel") or "", host, audio.port, payload_type, codec)

    async def bye(self) -> None:
        """Hang up (BYE) and close the MRCP connection."""
        if not self.hung_up.is_set() and self._sip is not None and self.answer is not None:
            self.cseq += 1
            request = SipRequest("BYE", self.remote_target, tuple(self._in_dialog_headers("BYE", self.cseq)))
            with contextlib.suppress(TimeoutError, OSError):  # no answer, or no server: the call is over
                self.bye_status = (await self._final_response(request)).status
            self.hung_up.set()
        await self.close()

    def redirect_rtp(self, host: str, port: int) -> None:
        """Send RTP to ``host:port`` instead of the answered address (a network impairment relay)."""
        assert self.answer is not None, "connect() first"
        self.answer = dataclasses.replace(self.answer, rtp_host=host, rtp_port=port)

    async def vanish(self) -> None:
        """Drop the call as a crashed caller does: the MRCP connection is reset (RST, not FIN), no BYE is
        sent, and the SIP and RTP sockets are closed."""
        if self._writer is not None:
            sock = self._writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.hung_up.set()
        await self.close(reset=True)

    async def close(self, *, reset: bool = False) -> None:
        """Close every socket (``reset``: abort the MRCP TCP connection with RST)."""
        if self._writer is not None:
            if reset:
                self._writer.transport.abort()
            else:
                self._writer.close()
                with contextlib.suppress(OSError):
                    await self._writer.wait_closed()
            self._writer = None
        if self._read_task is not None:
            self._read_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._read_task
            self._read_task = None
        for transport in (self._rtp, self._sip.transport if self._sip else None):
            if transport is not None:
                transport.close()
        self._rtp = None
        self._sip = None
        if self._sip_writer is not None:
            self._sip_writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await self._sip_writer.wait_closed()
            self._sip_writer = None
        if self._sip_task is not None:
            self._sip_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sip_task
            self._sip_task = None

    # -- MRCP --------------------------------------------------------------------------------------------
    async def _read_mrcp(self) -> None:
        assert self._reader is not None
        reader = MessageReader()
        try:
            while data := await self._reader.read(65536):
                reader.feed(data)
                while (message := reader.next_message()) is not None:
                    if isinstance(message, MrcpResponse):
                        future = self._pending.pop(message.request_id, None)
                        if future is not None and not future.done():
                            future.set_result(message)
                    elif isinstance(message, MrcpEvent):
                        self._events.put_nowait(message)
        except (OSError, GatewayError):
            pass
        finally:
            with contextlib.suppress(asyncio.QueueFull):
                self._events.put_nowait(None)

    async def request(self, method: str, *headers: tuple[str, str], body: bytes = b"",
                      timeout_s: float = 10.0) -> MrcpResponse:
        """Send ``method`` on the channel and wait for its response."""
        assert self._writer is not None, "connect() first"
        self._request_id += 1
        request_id = self._request_id
        future: asyncio.Future[MrcpResponse] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        all_headers = (("Channel-Identifier", self.channel_id), *headers)
        self._writer.write(serialize_mrcp(MrcpRequest(method, request_id, all_headers, body)))
        async with asyncio.timeout(timeout_s):
            return await future

    async def next_event(self, timeout_s: float = 30.0) -> MrcpEvent | None:
        """The server's next event (None once the MRCP connection closed)."""
        async with asyncio.timeout(timeout_s):
            return await self._events.get()

    # -- RTP ---------------------------------------------------------------------------------------------
    def _encode(self, frame: npt.NDArray[np.int16]) -> bytes:
        assert self.answer is not None
        if self.answer.codec == "PCMA":
            return alaw_encode(frame).tobytes()
        if self.answer.codec == "L16":
            return frame.astype(">i2").tobytes()
        return mulaw_encode(frame).tobytes()

    def _send_rtp(self, payload_type: int, payload: bytes, *, timestamp: int, marker: bool = False) -> None:
        assert self._rtp is not None and self.answer is not None
        self._seq = (self._seq + 1) & 0xFFFF
        packet = RtpPacket(payload_type, self._seq, timestamp & 0xFFFFFFFF, self._ssrc, payload, marker)
        self._rtp.sendto(serialize_rtp(packet), (self.answer.rtp_host, self.answer.rtp_port))

    def send_payload(self, payload: bytes, *, num_samples: int, marker: bool = False) -> None:
        """Send one RTP packet of audio already in the answered codec (``codec``: PCMU, PCMA or L16 big-endian);
        ``num_samples`` advances the RTP timestamp. The caller paces: the load generator sends its own frames."""
        assert self.answer is not None, "connect() first"
        self._send_rtp(self.answer.payload_type, payload, timestamp=self._timestamp, marker=marker)
        self._timestamp += num_samples

    @property
    def codec(self) -> str:
        """The codec offered (and answered: the offer holds no other): PCMU, PCMA or L16."""
        return self._codec

    async def send_audio(self, pcm: npt.NDArray[np.int16], *, realtime: float = 1.0) -> None:
        """Send 8 kHz PCM as 20 ms RTP packets, paced at ``realtime`` x real time (0: as fast as possible)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        for index, lo in enumerate(range(0, pcm.shape[0], FRAME_SAMPLES)):
            frame = pcm[lo:lo + FRAME_SAMPLES]
            if frame.shape[0] < FRAME_SAMPLES:
                frame = np.pad(frame, (0, FRAME_SAMPLES - frame.shape[0]))
            self._send_rtp(self.answer.payload_type if self.answer else 0, self._encode(frame),
                           timestamp=self._timestamp, marker=index == 0)
            self._timestamp += FRAME_SAMPLES
            if realtime > 0:
                delay = start + (index + 1) * FRAME_SAMPLES / 8000 / realtime - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)

    async def send_dtmf(self, digits: str, *, tone_s: float = 0.1, gap_s: float = 0.1) -> None:
        """Send each digit as an RFC 4733 telephone-event (three updates, three end packets)."""
        for digit in digits:
            event = DTMF_EVENTS.index(digit.upper())
            timestamp = self._timestamp
            steps = 3
            for step in range(1, steps + 1):
                duration = int(tone_s * 8000 * step / steps)
                self._send_rtp(TELEPHONE_EVENT_PT, bytes([event, 10, duration >> 8, duration & 0xFF]),
                               timestamp=timestamp, marker=step == 1)
                await asyncio.sleep(tone_s / steps)
            for _ in range(3):
                self._send_rtp(TELEPHONE_EVENT_PT, bytes([event, 0x80 | 10, duration >> 8, duration & 0xFF]),
                               timestamp=timestamp)
            self._timestamp += int((tone_s + gap_s) * 8000)
            await asyncio.sleep(gap_s)


async def recognize_file(uri: str, pcm: npt.NDArray[np.int16], *, grammar: str = "builtin:speech/transcribe",
                         realtime: float = 1.0, ssl_context: ssl.SSLContext | None = None,
                         credentials: tuple[str, str] | None = None) -> MrcpEvent | None:
    """One call: RECOGNIZE with ``grammar``, stream ``pcm``, return RECOGNITION-COMPLETE (None if none).
    A ``sips:`` URI runs SIP and MRCP over TLS, verified with ``ssl_context`` (system CAs when None);
    ``credentials`` (username, password) answer a SIP digest challenge."""
    client = MrcpClient(uri, ssl_context=ssl_context, credentials=credentials)
    await client.connect()
    try:
        response = await client.request("RECOGNIZE", ("Content-Type", "text/uri-list"),
                                        ("Cancel-If-Queue", "false"), ("Start-Input-Timers", "true"),
                                        body=grammar.encode())
        if response.status_code >= 300:
            return None
        sender = asyncio.create_task(client.send_audio(pcm, realtime=realtime))
        try:
            while (event := await client.next_event(timeout_s=pcm.shape[0] / 8000 + 30)) is not None:
                if event.event_name == "RECOGNITION-COMPLETE":
                    return event
            return None
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
    finally:
        await client.bye()


def cmd_stream_mrcp(uri: str, path: str, *, grammar: str, speed: float, ca_file: str | None = None,
                    credentials: tuple[str, str] | None = None) -> int:
    """``xlgate stream --mrcp``: one RECOGNIZE of ``path``; prints Completion-Cause and the NLSML body.
    With a ``sips:`` URI the server is verified against ``ca_file`` (system CAs when None); ``credentials``
    (username, password) answer a SIP digest challenge."""
    import sys

    from gateway.audio_files import read_audio_file
    from gateway.loop import run_async
    from protocols.audio.errors import AudioFileError
    from protocols.audio.pcm import float32_to_int16
    from protocols.audio.resample import resample

    try:
        clip = read_audio_file(path)
    except AudioFileError as exc:
        print(f"xlgate stream: error: {exc}", file=sys.stderr)
        return 1
    audio = clip.channels[0]
    if clip.sample_rate_hz != 8000:
        audio = resample(audio, from_hz=clip.sample_rate_hz, to_hz=8000)
    pcm = float32_to_int16(audio)
    pcm = np.concatenate([pcm, np.zeros(8000, dtype=np.int16)])  # trailing silence ends the utterance
    try:
        context = ssl.create_default_context(cafile=ca_file) if uri.startswith("sips:") else None
        event = run_async(recognize_file(uri, pcm, grammar=grammar, realtime=speed, ssl_context=context,
                                         credentials=credentials))
    except TimeoutError:
        print(f"xlgate stream: error: no answer from {uri} in time", file=sys.stderr)
        return 1
    except (OSError, GatewayError, ValueError) as exc:
        print(f"xlgate stream: error: {exc}", file=sys.stderr)
        return 1
    if event is None:
        print("xlgate stream: no RECOGNITION-COMPLETE", file=sys.stderr)
        return 1
    print(f"Completion-Cause: {event.header('Completion-Cause')}", file=sys.stderr)
    print(event.body.decode("utf-8", "replace"))
    return 0
