"""Every parser a peer can reach, fuzzed with Hypothesis through the targets of the long run
(``loadtest/fuzz_targets.py``: WebSocket JSON, SIP, SDP, MRCP, grammars, RTP, RTCP, gRPC config), plus the
inputs the fuzzer found, each as a regression test with the typed error that answers it now, and a short
run of ``python -m loadtest fuzz`` itself.

Inputs are mutations of valid messages (the captured UniMRCP exchange and each target's seeds) and raw
bytes; stream parsers get the same bytes in reads cut at drawn points. A target raises only on a finding
(an exception other than the parser's typed refusals, or a broken property), so each test is one call.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mrcp_fixtures import mrcp_messages, sip_messages

from loadtest import fuzz
from loadtest.fuzz_targets import INTERESTING_NUMBERS, MUTATION_KINDS, TARGETS, Mutation, chunks, mutate
from loadtest.fuzz_worker import Recorder
from protocols.mrcp.codec import MessageReader
from protocols.mrcp.errors import GrammarCompilationFailure, UnsupportedVersion
from protocols.mrcp.grammar import builtin_grammar, parse_srgs
from protocols.sdp.codec import parse_sdp
from protocols.sdp.errors import NotAcceptable, SdpSyntaxError
from protocols.sdp.offer_answer import AnswerConfig, answer_offer
from protocols.sip.codec import parse_message, parse_via
from protocols.sip.connection import SipServerConfig, SipServerCore
from protocols.sip.errors import BadRequest
from protocols.sip.events import Flow, InviteReceived, SipTransport

# --------------------------------------------------------------------------------------------- seeds

_SIP = sip_messages(from_client=True)
_MRCP = mrcp_messages(from_client=True)
_CAPTURED: dict[str, tuple[bytes, ...]] = {
    "sip": tuple(m.data for m in _SIP)
    + tuple(b"".join(m.data for m in _SIP if m.section == s and m.transport == "TCP") for s in "AB"),
    "sdp": tuple(m.data.split(b"\r\n\r\n", 1)[1] for m in _SIP if m.data.startswith(b"INVITE")),
    "mrcp": tuple(m.data for m in _MRCP)
    + tuple(b"".join(m.data for m in _MRCP if m.section == s) for s in sorted({m.section for m in _MRCP})),
    "grammar": tuple(
        m.data.split(b"\r\n\r\n", 1)[1] for m in _MRCP if m.data.split(b"\r\n\r\n", 1)[1].strip()
    ),
}


def _inputs(name: str) -> st.SearchStrategy[bytes]:
    target = TARGETS[name]
    seeds = target.seeds + _CAPTURED.get(name, ())
    payload = st.one_of(
        st.binary(max_size=12), st.sampled_from(target.tokens), st.sampled_from(INTERESTING_NUMBERS)
    )
    one = st.builds(
        Mutation,
        st.integers(0, MUTATION_KINDS - 1),
        st.integers(0, 1 << 16),
        st.integers(0, 1 << 16),
        payload,
    )
    mutated = st.builds(mutate, st.sampled_from(seeds), st.lists(one, max_size=6))
    return st.one_of(mutated, mutated, mutated, st.binary(max_size=400))


_CUTS = st.none() | st.lists(st.integers(1, 4096), max_size=8)
_SETTINGS = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------- the parsers, fuzzed


@_SETTINGS
@given(_inputs("ws-json"), _CUTS)
def test_fuzz_websocket_json(data: bytes, cuts: list[int] | None) -> None:
    TARGETS["ws-json"].run(data, cuts)


@_SETTINGS
@given(_inputs("sip"), _CUTS)
def test_fuzz_sip(data: bytes, cuts: list[int] | None) -> None:
    TARGETS["sip"].run(data, cuts)


@_SETTINGS
@given(_inputs("sdp"), _CUTS)
def test_fuzz_sdp(data: bytes, cuts: list[int] | None) -> None:
    TARGETS["sdp"].run(data, cuts)


@_SETTINGS
@given(_inputs("mrcp"), _CUTS)
def test_fuzz_mrcp(data: bytes, cuts: list[int] | None) -> None:
    TARGETS["mrcp"].run(data, cuts)


@_SETTINGS
@given(_inputs("grammar"), _CUTS)
def test_fuzz_grammars(data: bytes, cuts: list[int] | None) -> None:
    TARGETS["grammar"].run(data, cuts)


@_SETTINGS
@given(_inputs("rtp"), _CUTS)
def test_fuzz_rtp(data: bytes, cuts: list[int] | None) -> None:
    TARGETS["rtp"].run(data, cuts)


@_SETTINGS
@given(_inputs("rtcp"), _CUTS)
def test_fuzz_rtcp(data: bytes, cuts: list[int] | None) -> None:
    TARGETS["rtcp"].run(data, cuts)


@_SETTINGS
@given(_inputs("grpc-config"), _CUTS)
def test_fuzz_grpc_config(data: bytes, cuts: list[int] | None) -> None:
    TARGETS["grpc-config"].run(data, cuts)


def test_every_seed_is_accepted_whole() -> None:
    """The seeds are valid: each parses (so mutations start from deep inside each format)."""
    for seed in TARGETS["sip"].seeds[:-1]:
        parse_message(seed, datagram=True)
    for seed in TARGETS["sdp"].seeds:
        parse_sdp(seed)
    for seed in TARGETS["mrcp"].seeds:
        reader = MessageReader()
        reader.feed(seed)
        assert reader.next_message() is not None
    for seed in TARGETS["grammar"].seeds[:3]:
        assert parse_srgs(seed, uri="session:g").phrases
    for name in TARGETS:
        for seed in TARGETS[name].seeds:
            TARGETS[name].run(seed, None)


def test_mutations_and_cuts() -> None:
    assert mutate(b"abcdef", [Mutation(0, 1, 2, b"")]) == b"adef"
    assert mutate(b"abc", [Mutation(1, 3, 0, b"XY")]) == b"abcXY"
    assert mutate(b"abcdef", [Mutation(2, 0, 0, b"XY")]) == b"XYcdef"
    assert mutate(b"abcdef", [Mutation(3, 1, 2, b"")]) == b"abcbcdef"
    assert mutate(b"a", [Mutation(4, 0, 0, b"\x01")]) == b"`"
    assert mutate(b"abcdef", [Mutation(5, 2, 0, b"")]) == b"ab"
    assert (
        mutate(b"CSeq: 12 INVITE", [Mutation(6, 0, 0, "\u00b2".encode())]) == "CSeq: \u00b2 INVITE".encode()
    )
    assert chunks(b"abcdef", [4, 2, 2, 9, 0]) == [b"ab", b"cd", b"ef"]


# ---------------------------------------------------------------------------- what the fuzzer found

_UDP = Flow(SipTransport.UDP, ("127.0.0.1", 8062))
_INVITE = next(m.data for m in _SIP if m.data.startswith(b"INVITE") and m.transport == "UDP")


def _core() -> SipServerCore:
    return SipServerCore(SipServerConfig(advertise_host="127.0.0.1", port=5070))


def _statuses(core: SipServerCore) -> list[int]:
    return [parse_message(out.data).status for out in core.data_to_send()]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "data",
    [
        _INVITE.replace(b"Content-Length: 393", "Content-Length: \u00b2".encode()),
        _INVITE.replace(b"CSeq: 1001063617 INVITE", "CSeq: \u00b2 INVITE".encode()),
        _INVITE.replace(b"127.0.0.1:8062;rport", "127.0.0.1:\u0663;rport".encode()),
        _INVITE.replace(b"Supported: timer, 100rel", "Session-Expires: \u00b2".encode()),
        _INVITE.replace(b"Supported: timer, 100rel", b"Session-Expires: soon"),
    ],
    ids=["content-length", "cseq", "via-port", "session-expires-digit", "session-expires-word"],
)
def test_non_ascii_digits_are_bad_requests(data: bytes) -> None:
    """``str.isdigit()`` accepts "²" and "٣" where ``int()`` fails: these escaped as ValueError."""
    core = _core()
    core.receive_datagram(data, _UDP, 0.0)
    statuses = _statuses(core)
    assert statuses in ([400], []), statuses  # [] where not even the Via can be read to answer
    assert core.next_event() is None


def test_via_with_non_ascii_port_is_bad_request() -> None:
    with pytest.raises(BadRequest):
        parse_via("SIP/2.0/UDP 127.0.0.1:\u0663")


def test_bad_session_expires_in_update_is_answered_not_raised() -> None:
    """A malformed Session-Expires in an in-dialog UPDATE escaped from receive_message as BadRequest
    (and in a re-INVITE from our own accept()); it is answered 400 now."""
    core = _core()
    core.receive_datagram(_INVITE, _UDP, 0.0)
    event = core.next_event()
    assert isinstance(event, InviteReceived)
    core.accept(event.dialog_id, b"v=0\r\n", 0.1)
    core.data_to_send()
    dialog = (
        b"From: <sip:127.0.0.1:8062>;tag=myKD2p704BQXp\r\nTo: <sip:127.0.0.1:5070>;tag=" + event.dialog_id.encode()
        + b"\r\nCall-ID: 870c5e02-604d-1240-d6a0-26933f6646a5\r\n"
    )  # fmt: skip
    for method, cseq in ((b"UPDATE", b"1001063618"), (b"INVITE", b"1001063619")):
        request = (
            method + b" sip:127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:8062;branch=z9hG4bK" + cseq
            + b"\r\n" + dialog + b"CSeq: " + cseq + b" " + method + b"\r\nSupported: timer\r\n"
            + b"Session-Expires: 1ssion-Expires: 1800;refresher\r\nContent-Length: 0\r\n\r\n"
        )  # fmt: skip
        core.receive_datagram(request, _UDP, 1.0)
        assert _statuses(core) == [400]
        assert core.next_event() is None


def test_contact_that_is_no_uri_is_refused_so_our_bye_stays_valid() -> None:
    """A Contact with a space became the request line of our BYE, which no SIP parser reads."""
    core = _core()
    core.receive_datagram(
        _INVITE.replace(b"<sip:127.0.0.1:8062;transport=udp>", b"<sip:127.0.0.1:8062;tran port=udp>"),
        _UDP,
        0.0,
    )
    assert _statuses(core) == [400]
    assert core.next_event() is None


def _offer(audio: bytes) -> bytes:
    return (
        b"v=0\r\no=c 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        b"m=application 9 TCP/MRCPv2 1\r\na=resource:speechrecog\r\na=cmid:1\r\n" + audio
    )


def _answer(offer: bytes):  # type: ignore[no-untyped-def]
    return answer_offer(
        parse_sdp(offer),
        config=AnswerConfig(address="127.0.0.1"),
        rtp_port=40000,
        channel_id_for=lambda resource, cmid: "c1",
        session_id=1,
        session_version=1,
    )


def test_sdp_non_ascii_numbers_and_payload_types_beyond_7_bits() -> None:
    with pytest.raises(SdpSyntaxError):
        parse_sdp(_offer("m=audio \u00b2 RTP/AVP 0\r\n".encode()))
    # an rtpmap whose rate is not ASCII is ignored (PCMU is still known by its static type 0)
    audio = _answer(
        _offer("m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/\u00b2\r\na=ptime:\u00b2\r\n".encode())
    ).audio
    assert audio is not None and audio.payload_type == 0 and audio.ptime_ms == 20
    # payload type 200 cannot be carried in RTP's 7 bits: not offered, so not acceptable
    with pytest.raises(NotAcceptable):
        _answer(_offer(b"m=audio 4000 RTP/AVP 200\r\na=rtpmap:200 PCMU/8000\r\n"))
    audio = _answer(
        _offer(
            b"m=audio 4000 RTP/AVP 200 8 300\r\na=rtpmap:200 PCMU/8000\r\na=rtpmap:300 telephone-event/8000\r\n"
        )
    ).audio
    assert audio is not None and audio.payload_type == 8 and audio.telephone_event_payload_type is None


_GRAMMAR = '<grammar xmlns="http://www.w3.org/2001/06/grammar" version="1.0" root="r"><rule id="r">{}</rule>{}</grammar>'


@pytest.mark.parametrize(
    "body",
    [
        _GRAMMAR.format('<item repeat="2147483648-">b</item>', ""),  # hung: two billion repetitions
        _GRAMMAR.format('<item repeat="0-99999999"><ruleref special="VOID"/></item>', ""),
        _GRAMMAR.format('<item repeat="256">b</item>', ""),
        # each rule references the next ten times, 16 deep: 10**16 visits before the work bound
        _GRAMMAR.format(
            '<ruleref uri="#r0"/>',
            "".join(f'<rule id="r{i}">' + f'<ruleref uri="#r{i + 1}"/>' * 10 + "</rule>" for i in range(15))
            + '<rule id="r15">a</rule>',
        ),
        # a long token sequence copied once per child: quadratic without the work bound
        _GRAMMAR.format("<tag>x</tag>a " * 20000, ""),
    ],
    ids=["huge-repeat", "void-repeat", "repeat-256", "reference-fan-out", "long-sequence"],
)
def test_hostile_grammars_fail_fast(body: str) -> None:
    start = time.perf_counter()
    with pytest.raises(GrammarCompilationFailure):
        parse_srgs(body.encode(), uri="session:g")
    assert time.perf_counter() - start < 5.0  # a generous bound for a loaded machine; they took hours


def test_repeat_within_the_bound_still_compiles() -> None:
    grammar = parse_srgs(_GRAMMAR.format('<item repeat="0-255">b</item>', "").encode(), uri="session:g")
    assert len(grammar.phrases) == 255 and grammar.phrases[-1].text == " ".join(["b"] * 255)


def test_builtin_digits_with_non_ascii_length_is_a_compilation_failure() -> None:
    with pytest.raises(GrammarCompilationFailure):
        builtin_grammar("builtin:dtmf/digits?length=\u00b2")
    assert builtin_grammar("builtin:dtmf/digits?length=4").max_digits == 4


def test_mrcp_version_error_does_not_depend_on_reads() -> None:
    """``MRCP/.0 ...`` was UnsupportedVersion whole but MalformedMessage byte by byte."""
    data = b"MRCP/.0 183 RECOGNIZE 2\r\n\r\n"
    for reads in ([data], [data[i : i + 1] for i in range(len(data))]):
        reader = MessageReader()
        with pytest.raises(UnsupportedVersion):
            for read in reads:
                reader.feed(read)
                reader.next_message()


# ------------------------------------------------------------------------------- the long-run command


class _Crashy:
    name = "crashy"
    about = "raises on inputs starting with x, spins on inputs starting with s"

    @staticmethod
    def run(data: bytes, cuts: object) -> None:
        if data.startswith(b"x"):
            raise ValueError("boom")
        if data.startswith(b"s"):
            end = time.process_time() + 0.2
            while time.process_time() < end:
                pass


def test_recorder_keeps_each_finding_with_its_input(tmp_path: Path) -> None:
    recorder = Recorder(_Crashy(), inputs=5, out_dir=tmp_path, hang_s=0.1, engine="mutate")
    for data in (b"a", b"x1", b"x2", b"spin", b"b"):
        recorder(data)
    report = json.loads((tmp_path / "crashy.json").read_text())
    assert report["complete"] and report["inputs"] == 5 and report["crashes"] == 2 and report["hangs"] == 1
    assert report["slowest_cpu_s"] >= 0.2 and Path(report["slowest_input"]).read_bytes() == b"spin"
    (crash_key,) = [
        key for key in report["findings"] if key.startswith("ValueError at test_fuzz_parsers.py:")
    ]
    crash, hang = report["findings"][crash_key], report["findings"]["hang"]
    assert crash["count"] == 2 and Path(crash["input"]).read_bytes() == b"x1"
    assert "ValueError: boom" in Path(crash["input"]).with_suffix(".txt").read_text()
    assert hang["count"] == 1 and Path(hang["input"]).read_bytes() == b"spin"


@pytest.mark.parametrize("engine", ["mutate", "atheris"])
def test_fuzz_command_short_run(tmp_path: Path, engine: str) -> None:
    """The long-run command, short: every parser (one with atheris), figures and JSON, no findings."""
    if engine == "atheris":
        pytest.importorskip("atheris")  # Linux x86-64 wheels only (pyproject.toml)
    parser = argparse.ArgumentParser()
    fuzz.add_arguments(parser)
    parsers = "all" if engine == "mutate" else "sdp"
    args = parser.parse_args(
        ["--parser", parsers, "--inputs", "300", "--engine", engine, "--jobs", "2", "--work-dir",
         str(tmp_path / "work"), "--out", str(tmp_path / "fuzz.json")]
    )  # fmt: skip
    assert fuzz.run(args) == 0
    report = json.loads((tmp_path / "fuzz.json").read_text())
    assert report["passed"] and report["engine"] == engine
    names = [p["parser"] for p in report["parsers"]]
    assert names == (list(fuzz.PARSERS) if engine == "mutate" else ["sdp"])
    for part in report["parsers"]:
        assert part["complete"] and part["inputs"] == 300 and part["crashes"] == 0 and part["hangs"] == 0
        assert part["exec_per_s"] > 0 and part["slowest_s"] > 0 and part["memory"]["peak_rss_mb"] > 0
    if engine == "atheris":
        assert report["parsers"][0]["libfuzzer"]["cov"] > 0
