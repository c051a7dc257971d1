"""deploy/kamailio: the config parses, and a real Kamailio balances SIP over stand-in and real gateways.

Stand-ins: two small UDP responders on loopback answer Kamailio's OPTIONS probes and take INVITEs, with any
status the test sets. That test shows the dispatcher's round-robin, that OPTIONS probing takes a gateway
answering 503 out of rotation and puts it back once it answers 200, and that no call fails meanwhile.

End to end: two real `xlgate serve` processes (SIP+MRCP, the small random model) behind a real Kamailio
with deploy/kamailio/kamailio.cfg, all on 127.0.0.1. Calls are placed through Kamailio with our MRCP client
(gateway/mrcp_client.py), two at a time: each a full INVITE, RECOGNIZE with speech-like audio over RTP,
RECOGNITION-COMPLETE and BYE. Only SIP passes Kamailio: the SDP answer's MRCP and RTP addresses are the
chosen gateway's (its MRCP port tells the test which gateway took the call); Kamailio record-routes, so the
ACK and BYE follow the Record-Route through it to that gateway. The test shows that

* calls go round-robin to both gateways, and every BYE routed through Kamailio is answered 200;
* gateway a, SIGTERMed while a long call on it is live, answers OPTIONS 503 while it drains (b still 200),
  and Kamailio's next probe marks it down (the config logs ``gateway URI down``);
* every later call lands on b, none fails, and Kamailio never had to fail one over (a got no INVITE);
* the long call on a goes on through the drain and completes; the drain then ends it with a BYE that
  reaches the caller through Kamailio, and a exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from gateway.mrcp_client import MrcpClient
from loadtest import serverproc
from loadtest.serverproc import Ports, ServerProcess
from tests.wsharness import noise_pcm

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "deploy" / "kamailio" / "kamailio.cfg"
EXAMPLE_LIST = ROOT / "deploy" / "kamailio" / "dispatcher.list"


def find_kamailio() -> str:
    found = shutil.which("kamailio") or next(
        (p for p in ("/usr/sbin/kamailio", "/usr/local/sbin/kamailio") if os.access(p, os.X_OK)), None)
    if found is None:
        pytest.skip("kamailio is not installed (Debian package kamailio; `make install-apt` installs it)")
    return found


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_config_parses() -> None:
    done = subprocess.run(
        [find_kamailio(), "-c", "-f", str(CONFIG), "-A", f'DISPATCHER_LIST="{EXAMPLE_LIST}"'],
        capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "config file ok" in done.stdout + done.stderr


def test_example_dispatcher_list_is_well_formed() -> None:
    entries = [line.split() for line in EXAMPLE_LIST.read_text().splitlines() if line and not line.startswith("#")]
    assert len(entries) >= 2
    for setid, uri, flags, priority, *_attrs in entries:
        assert setid == "1" and uri.startswith("sip:") and flags.isdigit() and priority.isdigit(), (setid, uri)


def parse_sip(data: bytes) -> tuple[str, list[tuple[str, str]]]:
    head = data.decode(errors="replace").split("\r\n\r\n", 1)[0]
    first, *lines = head.split("\r\n")
    headers = [(name.strip().lower(), value.strip()) for name, _, value in (line.partition(":") for line in lines)]
    return first, headers


def reply_to(request: bytes, status: str) -> bytes:
    """A response that echoes the request's Via, From, To (tagged), Call-ID and CSeq (RFC 3261 §8.2.6)."""
    _, headers = parse_sip(request)
    out = [f"SIP/2.0 {status}"]
    for name, value in headers:
        if name in {"via", "v"}:
            out.append(f"Via: {value}")
        elif name in {"from", "f"}:
            out.append(f"From: {value}")
        elif name in {"to", "t"}:
            out.append(f"To: {value}" + ("" if ";tag=" in value else f";tag={uuid.uuid4().hex[:8]}"))
        elif name in {"call-id", "i"}:
            out.append(f"Call-ID: {value}")
        elif name == "cseq":
            out.append(f"CSeq: {value}")
    out += ["Content-Length: 0", "", ""]
    return "\r\n".join(out).encode()


class FakeGateway:
    """A UDP SIP responder: OPTIONS answered with ``options_status``, INVITEs with ``invite_status``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self.options_status = "200 OK"
        self.invite_status = "200 OK"
        self.options_answered: list[str] = []
        self.invites: list[str] = []  # Call-IDs
        self.lock = threading.Lock()
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self.serve, name=f"fake-gateway-{name}", daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.closing.is_set():
            try:
                data, peer = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            first, headers = parse_sip(data)
            method = first.split(" ", 1)[0]
            with self.lock:
                if method == "OPTIONS":
                    status = self.options_status
                    self.options_answered.append(status)
                elif method == "INVITE":
                    status = self.invite_status
                    self.invites.append(dict(headers).get("call-id", ""))
                else:
                    continue  # ACK, BYE: nothing to answer in this test
            self.sock.sendto(reply_to(data, status), peer)

    def close(self) -> None:
        self.closing.set()
        self.thread.join(timeout=5)
        self.sock.close()


def invite(sock: socket.socket, proxy_port: int) -> str:
    """Send an INVITE through the proxy; the final status line it gets back."""
    call_id = uuid.uuid4().hex
    port = sock.getsockname()[1]
    request = "\r\n".join([
        f"INVITE sip:xlgate@127.0.0.1:{proxy_port} SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{uuid.uuid4().hex[:16]};rport",
        "Max-Forwards: 70",
        f"From: <sip:agent@127.0.0.1:{port}>;tag={uuid.uuid4().hex[:8]}",
        f"To: <sip:xlgate@127.0.0.1:{proxy_port}>",
        f"Call-ID: {call_id}",
        "CSeq: 1 INVITE",
        f"Contact: <sip:agent@127.0.0.1:{port}>",
        "Content-Length: 0", "", ""]).encode()
    sock.sendto(request, ("127.0.0.1", proxy_port))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            data, _ = sock.recvfrom(65535)
        except TimeoutError:
            continue
        first, headers = parse_sip(data)
        code = int(first.split(" ")[1])
        if dict(headers).get("call-id") == call_id and code >= 200:
            return first
    raise AssertionError(f"no final response to INVITE {call_id}")


def wait_until(what: str, check: object, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def gateways() -> Iterator[tuple[FakeGateway, FakeGateway]]:
    a, b = FakeGateway("a"), FakeGateway("b")
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@contextlib.contextmanager
def running_kamailio(dispatcher_list: Path, log: Path) -> Iterator[int]:
    """A real Kamailio on 127.0.0.1 with deploy/kamailio/kamailio.cfg, probing every second; yields its
    SIP port. Its log (stderr) goes to ``log``; on the way out it is stopped and the log must hold no error."""
    proxy_port = free_udp_port()
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [find_kamailio(), "-DD", "-E", "-m", "32", "-M", "8", "-f", str(CONFIG),
             "-A", f'DISPATCHER_LIST="{dispatcher_list}"', "-A", f"LISTEN=udp:127.0.0.1:{proxy_port}",
             "-A", f"LISTEN_TCP=tcp:127.0.0.1:{proxy_port}", "-A", "PING_INTERVAL=1"],
            stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    try:
        # Listening once it answers an OPTIONS addressed to itself.
        wait_until("Kamailio to answer OPTIONS", lambda: options_status(proxy_port, timeout_s=0.2) == 200)
        yield proxy_port
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # Kamailio's workers share the group of the process started
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    text = log.read_text(errors="replace")
    assert " ERROR: " not in text, text[-3000:]


def test_dispatcher_balances_and_probing_removes_a_draining_gateway(
        gateways: tuple[FakeGateway, FakeGateway], tmp_path: Path) -> None:
    a, b = gateways
    dispatcher_list = tmp_path / "dispatcher.list"
    dispatcher_list.write_text(f"1 sip:127.0.0.1:{a.port} 0 0\n1 sip:127.0.0.1:{b.port} 0 0\n")
    with running_kamailio(dispatcher_list, tmp_path / "kamailio.log") as proxy_port, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.bind(("127.0.0.1", 0))
        client.settimeout(0.1)
        # OPTIONS probing reaches both gateways.
        wait_until("OPTIONS probes of both gateways", lambda: a.options_answered and b.options_answered)
        # Round-robin: calls go to both, and every one is answered.
        statuses = [invite(client, proxy_port) for _ in range(6)]
        assert all(s.startswith("SIP/2.0 200") for s in statuses), statuses
        assert len(a.invites) == len(b.invites) == 3
        # Gateway a drains: it answers probes (and new INVITEs) with 503. Once a probe has seen that,
        # the dispatcher sends it nothing more, and no call fails.
        with a.lock:
            a.options_status = a.invite_status = "503 Service Unavailable"
            answered_before = len(a.options_answered)
        # Two probes answered 503: the first's reply has surely been handled when the second comes.
        wait_until("two probes answered 503", lambda: len(a.options_answered) >= answered_before + 2)
        invites_before = len(a.invites)
        statuses = [invite(client, proxy_port) for _ in range(6)]
        assert all(s.startswith("SIP/2.0 200") for s in statuses), statuses
        assert len(a.invites) == invites_before, "a draining gateway still got calls"
        assert len(b.invites) == 9
        # Back in service: a answers 200 to a probe and gets calls again.
        with a.lock:
            a.options_status = a.invite_status = "200 OK"
            answered_before = len(a.options_answered)
        wait_until("two probes answered 200", lambda: len(a.options_answered) >= answered_before + 2)
        statuses = [invite(client, proxy_port) for _ in range(4)]
        assert all(s.startswith("SIP/2.0 200") for s in statuses), statuses
        assert len(a.invites) > invites_before


# -- real gateways ----------------------------------------------------------------------------------------
CALL_AUDIO_S = 1.5
LONG_CALL_AUDIO_S = 8.0  # the call that keeps the drained gateway draining while the later calls run
CALLS_PER_ROUND = 2
SILENCE_S = 1.0  # after the audio: the utterance ends


@dataclass
class Call:
    """What one call through the balancer saw."""

    call_id: str
    mrcp_port: int  # the gateway's MRCP port from the SDP answer: which gateway took the call
    completion_cause: str
    bye_status: int | None  # our BYE's final status (None: not sent, the gateway hung up first)
    hung_up_by_gateway: bool  # the gateway's BYE reached us through Kamailio

    @property
    def ended_cleanly(self) -> bool:
        """Our BYE was answered 200 by the gateway, or the gateway hung up itself (then ours, if it crossed
        the gateway's, may find the gateway gone)."""
        return self.bye_status == 200 or self.hung_up_by_gateway


def call_audio(seconds: float, seed: int) -> npt.NDArray[np.int16]:
    return np.concatenate([noise_pcm(seconds, seed=seed), np.zeros(int(SILENCE_S * 8000), dtype=np.int16)])


async def place_call(proxy_port: int, pcm: npt.NDArray[np.int16], *, realtime: float,
                     connected: asyncio.Event | None = None, clients: list[MrcpClient] | None = None) -> Call:
    """One full call through Kamailio: INVITE, RECOGNIZE with ``pcm`` over RTP, RECOGNITION-COMPLETE, BYE."""
    client = MrcpClient(f"sip:127.0.0.1:{proxy_port}")
    await client.connect()
    if clients is not None:
        clients.append(client)
    if connected is not None:
        connected.set()
    try:
        response = await client.request("RECOGNIZE", ("Content-Type", "text/uri-list"),
                                        ("Cancel-If-Queue", "false"), ("Start-Input-Timers", "true"),
                                        body=b"builtin:speech/transcribe")
        assert response.status_code == 200, response
        sender = asyncio.create_task(client.send_audio(pcm, realtime=realtime))
        try:
            while True:
                event = await client.next_event(timeout_s=pcm.shape[0] / 8000 / realtime + 20)
                assert event is not None, f"call {client.call_id}: the MRCP connection closed first"
                if event.event_name == "RECOGNITION-COMPLETE":
                    break
        finally:
            await sender
    finally:
        await client.bye()
    assert client.answer is not None
    return Call(client.call_id, client.answer.mrcp_port, event.header("Completion-Cause") or "", client.bye_status,
                client.hung_up_by_server)


async def call_round(proxy_port: int, seed: int) -> list[Call]:
    pcms = [call_audio(CALL_AUDIO_S, seed + i) for i in range(CALLS_PER_ROUND)]
    return list(await asyncio.gather(*(place_call(proxy_port, pcm, realtime=2.0) for pcm in pcms)))


def options_status(sip_port: int, timeout_s: float = 2.0) -> int | None:
    """Send one OPTIONS to ``sip_port`` (as Kamailio's probe does); its status (None: no answer)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(timeout_s)
        port = sock.getsockname()[1]
        call_id = uuid.uuid4().hex
        request = "\r\n".join([
            f"OPTIONS sip:127.0.0.1:{sip_port} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{uuid.uuid4().hex[:16]};rport",
            "Max-Forwards: 70", f"From: <sip:probe@127.0.0.1:{port}>;tag={uuid.uuid4().hex[:8]}",
            f"To: <sip:127.0.0.1:{sip_port}>", f"Call-ID: {call_id}", "CSeq: 1 OPTIONS", "Content-Length: 0",
            "", ""]).encode()
        sock.sendto(request, ("127.0.0.1", sip_port))
        try:
            data, _ = sock.recvfrom(65535)
        except TimeoutError:
            return None
        return int(data.split(b" ", 2)[1])


@pytest.fixture
def two_gateways(chatty_checkpoint: str, tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two real `xlgate serve` processes (SIP+MRCP, the small random model: this is about routing, not
    words); a drain may last 30 s, so the long call is never cut."""
    servers = [ServerProcess(ports=Ports.pick(grpc=False), model=chatty_checkpoint,
                             extra=["--runner", "thread", "--max-streams", "8"],
                             log_path=tmp_path / f"xlgate-{name}.log", fresh_log=True,
                             env={"XLGATE_DRAIN_TIMEOUT_MS": "30000"})
               for name in ("a", "b")]
    try:
        for server in servers:
            server.start()
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.kill()


def test_real_gateways_behind_kamailio_drain_without_a_failed_call(
        two_gateways: tuple[ServerProcess, ServerProcess], tmp_path: Path) -> None:
    a, b = two_gateways
    dispatcher_list = tmp_path / "dispatcher.list"
    dispatcher_list.write_text(f"1 {a.ports.sip_uri} 0 0\n1 {b.ports.sip_uri} 0 0\n")
    log = tmp_path / "kamailio.log"
    mrcp_ports = {a.ports.mrcp: "a", b.ports.mrcp: "b"}

    async def scenario() -> tuple[list[Call], list[Call], list[Call]]:
        # Round-robin over both gateways; every call completes and its BYE (routed by Kamailio along the
        # Record-Route) is answered 200 by the gateway.
        before = [call for seed in (0, 10) for call in await call_round(proxy_port, seed)]
        # Two long calls, one on each gateway; a is told to drain (SIGTERM) while they run.
        connected = [asyncio.Event() for _ in range(CALLS_PER_ROUND)]
        clients: list[MrcpClient] = []
        long_calls = [asyncio.create_task(place_call(proxy_port, call_audio(LONG_CALL_AUDIO_S, 100 + i),
                                                     realtime=1.0, connected=connected[i], clients=clients))
                      for i in range(CALLS_PER_ROUND)]
        try:
            for event in connected:
                await asyncio.wait_for(event.wait(), 10)
            landed = {mrcp_ports[c.answer.mrcp_port] for c in clients if c.answer is not None}
            assert landed == {"a", "b"}, landed
            a.signal(signal.SIGTERM)
            # Draining, with a call still live: a's OPTIONS answer turns 503 ...
            await asyncio.to_thread(wait_until, "a answers OPTIONS 503",
                                    lambda: options_status(a.ports.sip) == 503, 5)
            assert options_status(b.ports.sip) == 200
            # ... so Kamailio's next probe takes it out of rotation.
            await asyncio.to_thread(
                wait_until, "Kamailio to mark a down",
                lambda: f"gateway {a.ports.sip_uri} down" in log.read_text(errors="replace"), 10)
            after = [call for seed in (20, 30) for call in await call_round(proxy_port, seed)]
            assert a.alive(), "a stopped before the later calls were made: its long call ended too soon"
        finally:
            done = await asyncio.gather(*long_calls, return_exceptions=True)
        failed = [r for r in done if isinstance(r, BaseException)]
        assert not failed, failed
        return before, [r for r in done if isinstance(r, Call)], after

    with running_kamailio(dispatcher_list, log) as proxy_port:
        before, long_calls, after = asyncio.run(scenario())
        assert a.wait(15) == 0, "the drained gateway did not exit cleanly once its last call ended"
    every = before + long_calls + after
    # No call failed: each completed its recognition and its BYE was answered 200 by its gateway.
    assert all(c.completion_cause.startswith(("000", "001")) for c in every), every
    assert all(c.ended_cleanly for c in every), every
    # The drained gateway's long call was ended by the drain: its BYE followed the Record-Route back through
    # Kamailio to the caller.
    assert [c.hung_up_by_gateway for c in long_calls if c.mrcp_port == a.ports.mrcp] == [True], long_calls
    assert {mrcp_ports[c.mrcp_port] for c in before} == {"a", "b"}
    # Every call after the probe went to b, and Kamailio never had to fail one over: a got no INVITE.
    assert {mrcp_ports[c.mrcp_port] for c in after} == {"b"}, after
    text = log.read_text(errors="replace")
    assert "failed over" not in text, text[-3000:]
    for c in after:
        assert f"INVITE {c.call_id} to {b.ports.sip_uri}" in text, c
    assert metric_value(b, "xlgate_streams_started_total", protocol="mrcp") == len(
        [c for c in every if c.mrcp_port == b.ports.mrcp])


def metric_value(server: ServerProcess, name: str, **labels: str) -> float:
    return serverproc.value(server.metrics(), name, **labels)
