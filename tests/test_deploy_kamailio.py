"""deploy/kamailio: the config parses, and a real Kamailio balances SIP over two stand-in gateways.

xlgate has no SIP listener yet (the MRCP issue brings it), so two small UDP responders on loopback play the
gateways: they answer Kamailio's OPTIONS probes and take INVITEs. The test shows the dispatcher's
round-robin, that OPTIONS probing takes a draining gateway (OPTIONS answered 503) out of rotation, and that
no call fails meanwhile. The end-to-end test with real `xlgate serve` processes comes with SIP.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)
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


def test_dispatcher_balances_and_probing_removes_a_draining_gateway(
        gateways: tuple[FakeGateway, FakeGateway], tmp_path: Path) -> None:
    a, b = gateways
    dispatcher_list = tmp_path / "dispatcher.list"
    dispatcher_list.write_text(f"1 sip:127.0.0.1:{a.port} 0 0\n1 sip:127.0.0.1:{b.port} 0 0\n")
    proxy_port = free_udp_port()
    log = tmp_path / "kamailio.log"
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [find_kamailio(), "-DD", "-E", "-m", "32", "-M", "8", "-f", str(CONFIG),
             "-A", f'DISPATCHER_LIST="{dispatcher_list}"', "-A", f"LISTEN=udp:127.0.0.1:{proxy_port}",
             "-A", f"LISTEN_TCP=tcp:127.0.0.1:{proxy_port}", "-A", "PING_INTERVAL=1"],
            stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.settimeout(0.1)
    try:
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
    finally:
        client.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # Kamailio's workers share the group of the process started
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    text = log.read_text(errors="replace")
    assert " ERROR: " not in text, text[-3000:]
