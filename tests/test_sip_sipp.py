"""Real SIP peer (sipp, Debian package sip-tester) against the SIP transport on 127.0.0.1.

The recognizer side is not wired into the engine yet, so :class:`RecognizerSessionsDouble` (a test
double) answers offers with the real SDP negotiation and records the session lifecycle.
"""

from __future__ import annotations

import asyncio
import functools
import re
import shutil
import socket
from pathlib import Path

import pytest

from protocols.errors import OverloadedError
from protocols.sdp.codec import parse_sdp, serialize_sdp
from protocols.sdp.offer_answer import AnswerConfig, answer_offer
from protocols.sip.connection import SipServerConfig
from protocols.sip.events import InviteReceived, ReinviteReceived, TerminationReason
from protocols.sip.transport import SipServer

SIPP = shutil.which("sipp")
SCENARIOS = Path(__file__).parent / "sipp"
pytestmark = pytest.mark.skipif(SIPP is None, reason="sipp is not installed (apt-get install sip-tester)")


class RecognizerSessionsDouble:
    """Test double of the MRCP session owner: real SDP answers, fake ports, lifecycle recorded."""

    def __init__(self, *, overloaded: bool = False) -> None:
        self.overloaded = overloaded
        self.invites: list[str] = []
        self.confirmed: list[str] = []
        self.terminated: list[tuple[str, TerminationReason]] = []
        self.done = asyncio.Event()

    async def on_invite(self, event: InviteReceived) -> bytes:
        if self.overloaded:
            raise OverloadedError(retry_after_s=9)
        self.invites.append(event.dialog_id)
        negotiation = answer_offer(
            parse_sdp(event.offer),
            config=AnswerConfig(address="127.0.0.1", mrcp_port=1544),
            rtp_port=20000 + 2 * len(self.invites),
            channel_id_for=lambda resource, cmid: f"{len(self.invites):016x}",
            session_id=len(self.invites),
            session_version=1,
        )
        return serialize_sdp(negotiation.answer)

    async def on_reinvite(self, event: ReinviteReceived) -> bytes:
        raise NotImplementedError

    async def on_confirmed(self, dialog_id: str) -> None:
        self.confirmed.append(dialog_id)

    async def on_terminated(self, dialog_id: str, reason: TerminationReason) -> None:
        self.terminated.append((dialog_id, reason))
        self.done.set()


def run_async(function):  # type: ignore[no-untyped-def]
    """Run an ``async def`` test body in a fresh event loop (the suite has no asyncio plugin)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        return asyncio.run(function(*args, **kwargs))

    return wrapper


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _sipp(server: SipServer, scenario: str, transport: str, tmp_path: Path) -> tuple[int, str]:
    messages = tmp_path / f"{scenario}-{transport}.log"
    assert SIPP is not None
    process = await asyncio.create_subprocess_exec(
        SIPP, f"127.0.0.1:{server.port}", "-sf", str(SCENARIOS / f"{scenario}.xml"), "-m", "1", "-l", "1",
        "-t", transport, "-i", "127.0.0.1", "-p", str(_free_port()), "-timeout", "30", "-timeout_error",
        "-nostdin", "-trace_msg", "-message_file", str(messages), "-trace_err",
        "-error_file", str(tmp_path / f"{scenario}-{transport}.err"), "-trace_logs", "-log_file", str(tmp_path / f"{scenario}-{transport}.txt"),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, cwd=tmp_path,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    log = messages.read_text(errors="replace") if messages.exists() else ""
    assert process.returncode == 0, (
        f"sipp failed ({process.returncode}): {stderr.decode()[-2000:]}\n{log[-3000:]}"
    )
    return process.returncode, log


async def _started(handler: RecognizerSessionsDouble) -> SipServer:
    server = SipServer(SipServerConfig(advertise_host="127.0.0.1", port=0), handler)
    await server.start("127.0.0.1")
    return server


def _received_200_to_invite(log: str) -> int:
    blocks = re.split(r"\n-{10,}[^\n]*\n", log)
    return sum(
        1
        for b in blocks
        if "message received" in b and "SIP/2.0 200 OK" in b and re.search(r"CSeq: 1 INVITE", b)
    )


@pytest.mark.parametrize("transport", ["u1", "t1"])
@run_async
async def test_sipp_call_invite_ack_bye(transport: str, tmp_path: Path) -> None:
    handler = RecognizerSessionsDouble()
    server = await _started(handler)
    try:
        _, log = await _sipp(server, "mrcp_call", transport, tmp_path)
        await asyncio.wait_for(handler.done.wait(), 5)
        assert len(handler.invites) == 1 and handler.confirmed == handler.invites
        assert handler.terminated == [(handler.invites[0], TerminationReason.BYE)]
        assert "m=application 1544 TCP/MRCPv2 1" in log and "a=recvonly" in log
        assert _received_200_to_invite(log) == 1  # the ACK came at once: no retransmission
    finally:
        await server.aclose()
    assert server.task_count == 0 and server.core is not None and server.core.dialog_count == 0


@run_async
async def test_sipp_udp_200_is_retransmitted_until_the_late_ack(tmp_path: Path) -> None:
    handler = RecognizerSessionsDouble()
    server = await _started(handler)
    try:
        _, log = await _sipp(server, "mrcp_call_late_ack", "u1", tmp_path)
        await asyncio.wait_for(handler.done.wait(), 5)
        # sent at 0, resent at 0.5 s and 1.5 s before the ACK at 2.2 s (T1 = 500 ms, doubling)
        assert _received_200_to_invite(log) >= 3
        assert handler.terminated == [(handler.invites[0], TerminationReason.BYE)]
    finally:
        await server.aclose()


@pytest.mark.parametrize("transport", ["u1", "t1"])
@run_async
async def test_sipp_options(transport: str, tmp_path: Path) -> None:
    handler = RecognizerSessionsDouble()
    server = await _started(handler)
    try:
        await _sipp(server, "options", transport, tmp_path)
        assert handler.invites == []
    finally:
        await server.aclose()
    assert server.task_count == 0


@run_async
async def test_tcp_several_requests_on_one_connection_and_overload() -> None:
    """Raw TCP peer: OPTIONS then INVITE on one connection; the double is at capacity (503)."""
    handler = RecognizerSessionsDouble(overloaded=True)
    server = await _started(handler)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        base = "Via: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bK{b}\r\nFrom: <sip:a@127.0.0.1>;tag=x\r\nTo: <sip:b@127.0.0.1>\r\nCall-ID: {c}\r\nMax-Forwards: 70\r\n"
        options = f"OPTIONS sip:127.0.0.1 SIP/2.0\r\n{base.format(b='o', c='c1')}CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        sdp = (SCENARIOS / "mrcp_call.xml").read_text().split("v=0", 1)[1].split("]]>")[0]
        body = (
            ("v=0" + sdp)
            .replace("      ", "")
            .replace("[local_ip_type]", "4")
            .replace("[media_ip_type]", "4")
        )
        body = (
            body.replace("[local_ip]", "127.0.0.1")
            .replace("[media_ip]", "127.0.0.1")
            .replace("[media_port]", "4000")
            .strip()
            .replace("\n", "\r\n")
            + "\r\n"
        )
        invite = f"INVITE sip:127.0.0.1 SIP/2.0\r\n{base.format(b='i', c='c2')}CSeq: 1 INVITE\r\nContact: <sip:a@127.0.0.1:9;transport=tcp>\r\nContent-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n{body}"
        writer.write((options + invite).encode())
        await writer.drain()
        statuses = []
        while len(statuses) < 3:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
            statuses.append((int(head.split()[1]), re.search(rb"Retry-After: (\d+)", head)))
        assert [s for s, _ in statuses] == [200, 100, 503]
        assert statuses[2][1] is not None and statuses[2][1].group(1) == b"9"
        writer.close()
        await writer.wait_closed()
    finally:
        await server.aclose()
    assert server.task_count == 0


class SlowDouble(RecognizerSessionsDouble):
    """A session owner that takes a while to allocate (the CANCEL overtakes it)."""

    def __init__(self) -> None:
        super().__init__()
        self.allocated: list[str] = []

    async def on_invite(self, event: InviteReceived) -> bytes:
        answer = await super().on_invite(event)
        await asyncio.sleep(0.2)
        self.allocated.append(event.dialog_id)
        return answer

    async def on_terminated(self, dialog_id: str, reason: TerminationReason) -> None:
        assert dialog_id in self.allocated, "on_terminated ran before on_invite finished"
        self.allocated.remove(dialog_id)
        await super().on_terminated(dialog_id, reason)


@run_async
async def test_cancel_while_the_owner_allocates_releases_once() -> None:
    handler = SlowDouble()
    server = await _started(handler)
    try:
        loop = asyncio.get_running_loop()
        received: asyncio.Queue[bytes] = asyncio.Queue()

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
                received.put_nowait(data)

        transport, _ = await loop.create_datagram_endpoint(Client, local_addr=("127.0.0.1", 0))
        port = transport.get_extra_info("sockname")[1]
        sdp = b"v=0\r\no=a 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=application 9 TCP/MRCPv2 1\r\na=setup:active\r\na=connection:new\r\na=resource:speechrecog\r\nm=audio 4000 RTP/AVP 0\r\n"
        head = f"sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKc1;rport\r\nFrom: <sip:a@x>;tag=f\r\nTo: <sip:b@x>\r\nCall-ID: slow\r\nMax-Forwards: 70\r\n"
        transport.sendto(
            f"INVITE {head}CSeq: 1 INVITE\r\nContent-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n".encode()
            + sdp,
            ("127.0.0.1", server.port),
        )
        await asyncio.sleep(0.05)
        transport.sendto(
            f"CANCEL {head}CSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n".encode(), ("127.0.0.1", server.port)
        )
        await asyncio.wait_for(handler.done.wait(), 5)
        statuses = set()
        while len(statuses) < 3:
            statuses.add(int((await asyncio.wait_for(received.get(), 5)).split()[1]))
        assert statuses == {100, 200, 487}
        assert handler.allocated == [] and handler.terminated[0][1] is TerminationReason.CANCELLED
        transport.close()
    finally:
        await server.aclose()
    assert server.task_count == 0
