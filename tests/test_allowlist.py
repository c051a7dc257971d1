"""The SIP/MRCP source-address allow-list (``mrcp_allowed_networks``): the list itself, the SIP core's 403
(captured bytes in, bytes out), and ``xlgate serve`` over real loopback sockets: raw SIP over UDP and TCP, a
raw MRCP connection and xlgate's own MRCP client, refused from 127.0.0.1 when only 10.0.0.0/8 is allowed
(each refusal counted, nothing allocated) and served when 127.0.0.0/8 is."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import re
import ssl
from pathlib import Path

import numpy as np
import pytest

from gateway.config import ServeSettings
from gateway.mrcp_client import CallRefused, MrcpClient, recognize_file
from protocols.allowlist import AllowListError, NetworkAllowList
from protocols.sip.connection import SipServerConfig, SipServerCore
from protocols.sip.events import Flow, RequestRefused, SipTransport
from tests.wsharness import Running, free_port, running_server, settings_for

pytestmark = pytest.mark.timeout(120)

OUTSIDE = Flow(SipTransport.UDP, ("127.0.0.1", 5099))
INSIDE = Flow(SipTransport.UDP, ("10.1.2.3", 5099))


def sip_request(
    method: str, *, port: int = 5060, body: bytes = b"", branch: str = "z9hG4bK-allow-1"
) -> bytes:
    headers = [
        f"{method} sip:xlgate@127.0.0.1:{port} SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:5099;branch={branch};rport",
        "From: <sip:tester@127.0.0.1>;tag=t1",
        "To: <sip:xlgate@127.0.0.1>",
        "Call-ID: allow-list-1@127.0.0.1",
        f"CSeq: 1 {method}",
        "Max-Forwards: 70",
    ]
    if body:
        headers.append("Content-Type: application/sdp")
    headers.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body


# ---------------------------------------------------------------------------------------------- the list


def test_networks_addresses_and_mapped_ipv6() -> None:
    allowed = NetworkAllowList.parse(" 10.0.0.0/8, 192.0.2.7 ,2001:db8::/32")
    assert str(allowed) == "10.0.0.0/8, 192.0.2.7/32, 2001:db8::/32"
    for host in (
        "10.0.0.1",
        "10.255.255.255",
        "192.0.2.7",
        "::ffff:10.9.9.9",
        "2001:db8::1",
        "2001:db8::1%eth0",
    ):
        assert allowed.allows(host), host
    for host in (
        "127.0.0.1",
        "192.0.2.8",
        "11.0.0.1",
        "::1",
        "2001:db9::1",
        "",
        "localhost",
        "::ffff:127.0.0.1",
    ):
        assert not allowed.allows(host), host


@pytest.mark.parametrize(
    "text", ["", " , ", "10.0.0.1/8", "10.0.0.0/33", "localhost", "10.0.0.0/8;11.0.0.0/8"]
)
def test_malformed_lists(text: str) -> None:
    with pytest.raises(AllowListError):
        NetworkAllowList.parse(text)


# ---------------------------------------------------------------------------------------- SIP core, sans-I/O


def core(networks: str) -> SipServerCore:
    return SipServerCore(
        SipServerConfig(advertise_host="127.0.0.1", allowed_networks=NetworkAllowList.parse(networks)),
        new_tag=lambda: "tag1",
    )


def test_requests_from_outside_get_a_stateless_403() -> None:
    sip = core("10.0.0.0/8")
    for method, body in (("OPTIONS", b""), ("INVITE", b"v=0\r\n"), ("BYE", b""), ("REGISTER", b"")):
        sip.receive_datagram(sip_request(method, body=body), OUTSIDE, now=0.0)
        (out,) = sip.data_to_send()
        assert out.flow == OUTSIDE  # the packet's source, whatever the Via says
        assert out.data.startswith(b"SIP/2.0 403 Forbidden\r\n"), out.data
        assert f"CSeq: 1 {method}".encode() in out.data and b"Call-ID: allow-list-1@127.0.0.1" in out.data
        assert sip.next_event() == RequestRefused(OUTSIDE, method, "address")
        assert sip.next_event() is None
    assert sip.dialog_count == 0 and sip.get_timer() is None  # no transaction, no dialog, no timer kept


def test_acks_responses_and_garbage_from_outside_get_nothing() -> None:
    sip = core("10.0.0.0/8")
    sip.receive_datagram(sip_request("ACK"), OUTSIDE, now=0.0)
    assert sip.data_to_send() == [] and sip.next_event() == RequestRefused(OUTSIDE, "ACK", "address")
    response = (
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-x\r\nFrom: <sip:a@b>;tag=1\r\n"
        b"To: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n"
    )
    sip.receive_datagram(response, OUTSIDE, now=0.0)
    sip.receive_datagram(
        b"OPTIONS nonsense\r\nVia: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK-2\r\n\r\n", OUTSIDE, now=0.0
    )
    assert sip.data_to_send() == [] and sip.next_event() is None


def test_requests_from_inside_are_served() -> None:
    sip = core("10.0.0.0/8")
    sip.receive_datagram(sip_request("OPTIONS"), INSIDE, now=0.0)
    (out,) = sip.data_to_send()
    assert out.data.startswith(b"SIP/2.0 200 OK\r\n") and sip.next_event() is None
    tcp = Flow(SipTransport.TCP, ("127.0.0.1", 40000), 7)
    from protocols.sip.codec import parse_message

    sip.receive_message(parse_message(sip_request("OPTIONS", branch="z9hG4bK-tcp")), tcp, now=0.0)
    (out,) = sip.data_to_send()
    assert out.flow == tcp and out.data.startswith(b"SIP/2.0 403 Forbidden\r\n")


# ----------------------------------------------------------------------------------- xlgate serve, sockets


def counter(srv: Running, protocol: str) -> float:
    _, body = srv.http_get("/metrics")
    match = re.search(
        rf'^xlgate_auth_failures_total{{protocol="{protocol}",reason="address"}} (\S+)$', body, re.MULTILINE
    )
    assert match, f"no auth failure counter for {protocol}"
    return float(match.group(1))


async def udp_exchange(port: int, data: bytes, timeout_s: float = 5.0) -> bytes:
    loop = asyncio.get_running_loop()
    received: asyncio.Queue[bytes] = asyncio.Queue(4)

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, payload: bytes, addr: object) -> None:
            received.put_nowait(payload)

    transport, _ = await loop.create_datagram_endpoint(Client, local_addr=("127.0.0.1", 0))
    try:
        transport.sendto(data, ("127.0.0.1", port))
        async with asyncio.timeout(timeout_s):
            return await received.get()
    finally:
        transport.close()


async def closed_at_once(port: int, send: bytes) -> bytes:
    """Connect, send, and read until the server closes: returns what it sent (nothing, when refused)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(send)
        async with asyncio.timeout(5):
            try:
                return await reader.read()
            except ConnectionResetError:
                return b""
    finally:
        writer.close()


def serve_settings(model: str, networks: str) -> tuple[ServeSettings, int, int]:
    sip_port, mrcp_port = free_port(), free_port()
    low = random.randrange(30000, 60000, 2)
    settings = settings_for(
        model,
        "--sip-port",
        str(sip_port),
        "--mrcp-port",
        str(mrcp_port),
        "--rtp-ports",
        f"{low}-{low + 19}",
        "--mrcp-allowed-networks",
        networks,
    )
    return settings, sip_port, mrcp_port


def test_serve_refuses_sip_and_mrcp_from_outside_the_list(chatty_checkpoint: str) -> None:
    settings, sip_port, mrcp_port = serve_settings(chatty_checkpoint, "10.0.0.0/8, 192.0.2.0/24")

    async def main() -> None:
        async with running_server(settings) as srv:
            reply = await udp_exchange(sip_port, sip_request("OPTIONS", port=sip_port))
            # Each refusal is counted before its answer leaves (the 403, or the closing of the connection).
            assert reply.startswith(b"SIP/2.0 403 Forbidden\r\n")
            assert counter(srv, "sip") == 1
            assert await closed_at_once(sip_port, sip_request("OPTIONS", port=sip_port)) == b""
            assert counter(srv, "sip") == 2
            assert await closed_at_once(mrcp_port, b"MRCP/2.0 ") == b""
            assert counter(srv, "mrcp") == 1
            client = MrcpClient(f"sip:127.0.0.1:{sip_port}")
            with pytest.raises(CallRefused) as refused:
                await client.connect()
            assert refused.value.status == 403
            await client.close()
            assert counter(srv, "sip") >= 3  # the INVITE (once more for each retransmission)
            _, body = srv.http_get("/metrics")
            assert 'xlgate_streams_started_total{protocol="mrcp"} 0.0' in body

    asyncio.run(main())


def test_serve_allows_sip_and_mrcp_from_the_list(chatty_checkpoint: str) -> None:
    settings, sip_port, _ = serve_settings(chatty_checkpoint, "127.0.0.0/8")

    async def main() -> None:
        async with running_server(settings) as srv:
            reply = await udp_exchange(sip_port, sip_request("OPTIONS", port=sip_port))
            assert reply.startswith(b"SIP/2.0 200 OK\r\n")
            pcm = (np.random.default_rng(0).standard_normal(8000) * 3000).astype(np.int16)
            pcm = np.concatenate([pcm, np.zeros(8000, dtype=np.int16)])
            event = await recognize_file(f"sip:127.0.0.1:{sip_port}", pcm, realtime=4.0)
            assert event is not None and event.event_name == "RECOGNITION-COMPLETE"
            _, body = srv.http_get("/metrics")
            assert 'xlgate_streams_started_total{protocol="mrcp"} 1.0' in body
            assert counter(srv, "sip") == 0 and counter(srv, "mrcp") == 0

    asyncio.run(main())


def test_serve_closes_tls_connections_from_outside_the_list(chatty_checkpoint: str, tmp_path: Path) -> None:
    """SIP over TLS and MRCP over TLS: a peer outside the list gets its TLS handshake, then the connection
    closes before a byte of SIP or MRCP is read; each is counted."""
    from tests.test_tls_mrcp import certificate

    cert, key = certificate(tmp_path, "server")
    sips_port, mrcp_tls_port = free_port(), free_port()
    settings, _, _ = serve_settings(chatty_checkpoint, "10.0.0.0/8")
    settings = dataclasses.replace(
        settings,
        tls_cert=cert,
        tls_key=key,
        sips_port=sips_port,
        mrcp_tls_port=mrcp_tls_port,
    )
    client_context = ssl.create_default_context(cafile=str(cert))

    async def closed_after_handshake(port: int) -> bytes:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_context, server_hostname="localhost"
        )
        try:
            writer.write(sip_request("OPTIONS", port=port))
            async with asyncio.timeout(5):
                try:
                    return await reader.read()
                except (ConnectionResetError, ssl.SSLError):
                    return b""
        finally:
            writer.close()

    async def main() -> None:
        async with running_server(settings) as srv:
            assert await closed_after_handshake(sips_port) == b""
            assert counter(srv, "sip") == 1
            assert await closed_after_handshake(mrcp_tls_port) == b""
            assert counter(srv, "mrcp") == 1

    asyncio.run(main())
