"""The MRCP adapter end to end over loopback: xlgate's MRCP client (SIP + RTP + MRCP) against a real engine.

Protocol-behaviour cases run the small random "chatty" model (it emits text for any audio); the dictation
and grammar cases run the bundled model on espeak-ng speech. After every case the server holds nothing:
no call, channel, engine stream or slot, RTP port or task; nothing was logged at ERROR and the internal
error counter stayed at zero (a hang-up is never an error).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import wave
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit
from xml.etree import ElementTree

import jiwer
import numpy as np
import pytest
from prometheus_client import generate_latest

from gateway.engine import Engine
from gateway.metrics import Metrics
from gateway.models import load_model
from gateway.mrcp_adapter import MrcpGateway, MrcpSettings, score_phrases
from gateway.mrcp_client import CallRefused, MrcpClient
from gateway.runner import ModelRunner, ThreadRunner
from protocols.mrcp.codec import MessageReader
from protocols.mrcp.events import MrcpEvent, MrcpRequest, MrcpResponse
from protocols.mrcp.grammar import parse_srgs
from protocols.sip.codec import SipResponse, parse_message
from streaming_model.checkpoint import LoadedModel
from streaming_model.data.voices import synthesize
from streaming_model.decoding import Hypothesis, Word
from streaming_model.features import FbankConfig
from streaming_model.tokenizer import CharTokenizer
from tests.conftest import make_chatty_model
from tests.mrcp_fixtures import load_exchange, mrcp_messages
from tests.test_bundled_model import VOICE

pytestmark = pytest.mark.timeout(180)

TRANSCRIBE = b"builtin:speech/transcribe"
ANY_CONFIDENCE = ("Confidence-Threshold", "0.0")  # the random model's confidences are low


@dataclass
class Served:
    gateway: MrcpGateway
    engine: Engine
    uri: str


def _chatty() -> LoadedModel:
    return LoadedModel(make_chatty_model(), FbankConfig(), CharTokenizer(), trained=False)


@contextlib.asynccontextmanager
async def served(loaded: LoadedModel, *, max_streams: int = 2, media_timeout_s: float = 30.0,
                 waveform_dir: Path | None = None) -> AsyncIterator[Served]:
    """An engine and an MRCP gateway on free ports; on exit, checks that everything was released."""
    runner = ThreadRunner(ModelRunner(loaded, max_streams=max_streams))
    engine = Engine(runner, metrics=Metrics(), max_streams=max_streams, max_batch_size=max_streams,
                    max_wait_s=0.002, max_pending_chunks=8)
    low = random.randrange(30000, 60000, 2)
    gateway = MrcpGateway(engine, MrcpSettings(sip_port=0, mrcp_port=0, rtp_port_low=low, rtp_port_high=low + 99,
                                               media_timeout_s=media_timeout_s, waveform_dir=waveform_dir))
    engine_task = asyncio.create_task(engine.run())
    await gateway.start()
    try:
        yield Served(gateway, engine, f"sip:127.0.0.1:{gateway.sip.port}")
        await wait_released(gateway, engine, max_streams)
    finally:
        await gateway.aclose()
        engine.close()
        await engine_task
        await runner.close()


async def wait_released(gateway: MrcpGateway, engine: Engine, max_streams: int) -> None:
    """Every call's resources back to zero (calls end asynchronously after the BYE's answer)."""
    await until(lambda: not (gateway.call_count or gateway.task_count or gateway.ports.in_use
                             or gateway.mrcp.channel_count or engine.live_streams
                             or engine.scheduler.free_slots != max_streams))


async def until(done: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait for a condition the server reaches by itself (it exposes no event for these counts)."""
    async with asyncio.timeout(timeout_s):
        while True:
            if done():
                return
            await asyncio.sleep(0.02)


def no_errors(caplog: pytest.LogCaptureFixture, engine: Engine) -> None:
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors
    body = generate_latest(engine.metrics.registry).decode()
    assert 'xlgate_errors_total{kind="internal"' not in body


def run(loaded: Callable[[], LoadedModel], body: Callable[[Served], Awaitable[None]], caplog: pytest.LogCaptureFixture,
        *, event_loop: str = "asyncio", **options: float | Path) -> None:
    caplog.set_level(logging.INFO, logger="xlgate")

    async def main() -> None:
        async with served(loaded(), **options) as srv:  # type: ignore[arg-type]
            async with asyncio.timeout(90):  # a hang fails here, under either event loop
                await body(srv)
            engine = srv.engine
        no_errors(caplog, engine)

    if event_loop == "uvloop":  # what `xlgate serve` runs on by default
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(8000 * seconds)) * 3000).astype(np.int16)


async def recognize(client: MrcpClient, grammar: bytes = TRANSCRIBE, *headers: tuple[str, str]) -> int:
    response = await client.request("RECOGNIZE", ("Content-Type", "text/uri-list"), *headers, body=grammar)
    assert response.status_code == 200 and response.request_state.value == "IN-PROGRESS", response
    return response.request_id


async def complete(client: MrcpClient, timeout_s: float = 30.0) -> tuple[list[str], MrcpEvent]:
    """Events until RECOGNITION-COMPLETE: (names of the events before it, the completion)."""
    names: list[str] = []
    while True:
        event = await client.next_event(timeout_s)
        assert event is not None, "MRCP connection closed before RECOGNITION-COMPLETE"
        if event.event_name == "RECOGNITION-COMPLETE":
            return names, event
        names.append(event.event_name)


# ------------------------------------------------------------------------------------------ protocol cases
def test_no_input_timeout_when_no_rtp_arrives(caplog: pytest.LogCaptureFixture) -> None:
    async def body(srv: Served) -> None:
        client = MrcpClient(srv.uri)
        await client.connect()
        await recognize(client, TRANSCRIBE, ("No-Input-Timeout", "400"))
        names, done = await complete(client, timeout_s=10)
        assert names == [] and done.header("Completion-Cause") == "002 no-input-timeout"
        await client.bye()

    run(_chatty, body, caplog)


@pytest.mark.parametrize("codec", ["PCMU", "PCMA", "L16"])
def test_speech_then_rtp_stops_completes_on_the_wall_clock(caplog: pytest.LogCaptureFixture, codec: str) -> None:
    """The captured client stops sending at the end of its file: the missing audio counts as silence."""

    async def body(srv: Served) -> None:
        client = MrcpClient(srv.uri, codec=codec)
        await client.connect()
        assert client.answer is not None and client.answer.codec == codec
        await recognize(client, TRANSCRIBE, ("Speech-Complete-Timeout", "300"),
                        ("Speech-Incomplete-Timeout", "300"), ANY_CONFIDENCE)
        await client.send_audio(noise(1.5), realtime=1.0)
        loop = asyncio.get_running_loop()
        stopped = loop.time()
        names, done = await complete(client, timeout_s=15)
        assert names[0] == "START-OF-INPUT"
        assert done.header("Completion-Cause") == "000 success", done
        assert b"<input mode=\"speech\"" in done.body or b"<input" in done.body
        assert loop.time() - stopped < 5
        await client.bye()

    run(_chatty, body, caplog)


def test_stop_mid_utterance_ends_the_stream(caplog: pytest.LogCaptureFixture) -> None:
    async def body(srv: Served) -> None:
        client = MrcpClient(srv.uri)
        await client.connect()
        request_id = await recognize(client)
        sender = asyncio.create_task(client.send_audio(noise(3.0)))
        event = await client.next_event(10)
        assert event is not None and event.event_name == "START-OF-INPUT"
        response = await client.request("STOP")
        assert response.status_code == 200 and response.header("Active-Request-Id-List") == str(request_id)
        await until(lambda: srv.engine.live_streams == 0, 5)
        await sender
        with pytest.raises(TimeoutError):
            await client.next_event(0.5)  # no RECOGNITION-COMPLETE after a STOP
        await client.bye()

    run(_chatty, body, caplog)


def test_bye_mid_utterance_releases_everything(caplog: pytest.LogCaptureFixture) -> None:
    async def body(srv: Served) -> None:
        client = MrcpClient(srv.uri)
        await client.connect()
        await recognize(client)
        sender = asyncio.create_task(client.send_audio(noise(3.0)))
        event = await client.next_event(10)
        assert event is not None and event.event_name == "START-OF-INPUT"
        assert srv.engine.live_streams == 1 and srv.gateway.ports.in_use == 1
        await client.bye()
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, AssertionError):
            await sender

    run(_chatty, body, caplog)


def test_tcp_reset_mid_utterance_hangs_up_the_call(caplog: pytest.LogCaptureFixture) -> None:
    async def body(srv: Served) -> None:
        client = MrcpClient(srv.uri)
        await client.connect()
        await recognize(client)
        sender = asyncio.create_task(client.send_audio(noise(3.0)))
        event = await client.next_event(10)
        assert event is not None and event.event_name == "START-OF-INPUT"
        assert client._writer is not None
        client._writer.transport.abort()  # RST, no goodbye
        async with asyncio.timeout(10):
            await client.hung_up.wait()  # the server ends the SIP dialog with BYE
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, AssertionError):
            await sender
        await client.close()

    run(_chatty, body, caplog)


def test_garbage_on_the_mrcp_port_harms_no_call(caplog: pytest.LogCaptureFixture) -> None:
    async def body(srv: Served) -> None:
        client = MrcpClient(srv.uri)
        await client.connect()
        assert client.answer is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", client.answer.mrcp_port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)) * 8)
        await writer.drain()
        async with asyncio.timeout(5):
            await reader.read()  # the server answers or closes; either way it does not hang
        writer.close()
        await recognize(client, TRANSCRIBE, ("No-Input-Timeout", "300"))
        _, done = await complete(client, timeout_s=10)
        assert done.header("Completion-Cause") == "002 no-input-timeout"
        await client.bye()

    run(_chatty, body, caplog)


def test_dtmf_digits_grammar(caplog: pytest.LogCaptureFixture) -> None:
    async def body(srv: Served) -> None:
        client = MrcpClient(srv.uri)
        await client.connect()
        await recognize(client, b"builtin:dtmf/digits?length=3")
        assert srv.engine.live_streams == 0  # a DTMF-only request needs no engine stream
        await client.send_dtmf("123")
        names, done = await complete(client, timeout_s=10)
        assert names == ["START-OF-INPUT"]
        assert done.header("Completion-Cause") == "000 success"
        assert b'mode="dtmf"' in done.body and b"123" in done.body.replace(b" ", b"")
        await client.bye()

    run(_chatty, body, caplog)


def test_recognition_timeout_while_speech_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    async def body(srv: Served) -> None:
        client = MrcpClient(srv.uri)
        await client.connect()
        await recognize(client, TRANSCRIBE, ("Recognition-Timeout", "1000"), ANY_CONFIDENCE)
        sender = asyncio.create_task(client.send_audio(noise(4.0)))
        names, done = await complete(client, timeout_s=10)
        assert names[0] == "START-OF-INPUT"
        assert done.header("Completion-Cause") in {"008 success-maxtime", "015 no-match-maxtime"}
        assert not sender.done()  # cut while the caller still talks
        await client.bye()
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, AssertionError):
            await sender

    run(_chatty, body, caplog)


def test_start_input_timers_false_waits_for_start_input_timers(caplog: pytest.LogCaptureFixture) -> None:
    async def body(srv: Served) -> None:
        client = MrcpClient(srv.uri)
        await client.connect()
        await recognize(client, TRANSCRIBE, ("Start-Input-Timers", "false"), ("No-Input-Timeout", "300"))
        with pytest.raises(TimeoutError):
            await client.next_event(0.8)  # the prompt plays: no timer runs
        assert (await client.request("START-INPUT-TIMERS")).status_code == 200
        _, done = await complete(client, timeout_s=5)
        assert done.header("Completion-Cause") == "002 no-input-timeout"
        await client.bye()

    run(_chatty, body, caplog)


def test_partial_results_vendor_parameter(caplog: pytest.LogCaptureFixture) -> None:
    """INTERMEDIATE-RESULT events, each naming the request's audio it covers (``xlgate.audio-end-ms``, the
    load generator's latency reference): growing, and never past the audio sent so far."""

    async def body(srv: Served) -> None:
        client = MrcpClient(srv.uri)
        await client.connect()
        await recognize(client, TRANSCRIBE, ("Vendor-Specific-Parameters", "xlgate.partial-results=true"),
                        ("Speech-Complete-Timeout", "300"), ("Speech-Incomplete-Timeout", "300"), ANY_CONFIDENCE)
        loop = asyncio.get_running_loop()
        sender = asyncio.create_task(client.send_audio(noise(1.5)))
        started = loop.time()
        names: list[str] = []
        ends_ms: list[tuple[float, float]] = []
        while (event := await client.next_event(10)) is not None and event.event_name != "RECOGNITION-COMPLETE":
            names.append(event.event_name)
            if event.event_name == "INTERMEDIATE-RESULT":
                match = re.fullmatch(r"xlgate\.audio-end-ms=(\d+)", event.header("Vendor-Specific-Parameters") or "")
                assert match, event.headers
                ends_ms.append((float(match[1]), (loop.time() - started) * 1000))
        await sender
        assert event is not None and event.header("Completion-Cause") == "000 success"
        assert names[0] == "START-OF-INPUT" and ends_ms
        assert [e for e, _ in ends_ms] == sorted(e for e, _ in ends_ms)
        # Sent so far, plus one 20 ms packet of pacing slack.
        assert all(0 < end_ms <= elapsed_ms + 20 for end_ms, elapsed_ms in ends_ms), ends_ms
        await client.bye()

    run(_chatty, body, caplog)


def _waveform_uri(header: str | None) -> tuple[Path, int, int]:
    """``<file:///...>;size=N;duration=MS`` (RFC 6787 §9.4.26) -> (path, size, duration_ms)."""
    match = re.fullmatch(r"<(file:///[^>]+)>;size=(\d+);duration=(\d+)", header or "")
    assert match, header
    return Path(unquote(urlsplit(match[1]).path)), int(match[2]), int(match[3])


def test_save_waveform_without_a_folder_is_accepted_and_names_no_uri(caplog: pytest.LogCaptureFixture) -> None:
    async def body(srv: Served) -> None:
        client = MrcpClient(srv.uri)
        await client.connect()
        await recognize(client, TRANSCRIBE, ("Save-Waveform", "true"), ("Speech-Complete-Timeout", "300"),
                        ("Speech-Incomplete-Timeout", "300"), ANY_CONFIDENCE)
        await client.send_audio(noise(1.0))
        _, done = await complete(client, timeout_s=10)
        assert done.header("Completion-Cause") == "000 success"
        assert done.header("Waveform-URI") is None
        await client.bye()

    run(_chatty, body, caplog)


def test_dtmf_during_dictation_decides_the_result(caplog: pytest.LogCaptureFixture) -> None:
    async def body(srv: Served) -> None:
        client = MrcpClient(srv.uri)
        await client.connect()
        await recognize(client, b"builtin:speech/transcribe\r\nbuiltin:dtmf/digits?length=2")
        await client.send_dtmf("42")
        names, done = await complete(client, timeout_s=10)
        assert names == ["START-OF-INPUT"] and done.header("Completion-Cause") == "000 success"
        assert b'mode="dtmf"' in done.body and b"42" in done.body.replace(b" ", b"")
        await client.bye()

    run(_chatty, body, caplog)


def test_unsupported_speech_language(caplog: pytest.LogCaptureFixture) -> None:
    async def body(srv: Served) -> None:
        client = MrcpClient(srv.uri)
        await client.connect()
        await recognize(client, TRANSCRIBE, ("Speech-Language", "fr-FR"))
        _, done = await complete(client, timeout_s=5)
        assert done.header("Completion-Cause") == "010 language-unsupported"
        assert srv.engine.live_streams == 0
        await recognize(client, TRANSCRIBE, ("Speech-Language", "en-GB"), ("No-Input-Timeout", "200"))
        _, done = await complete(client, timeout_s=5)
        assert done.header("Completion-Cause") == "002 no-input-timeout"
        await client.bye()

    run(_chatty, body, caplog)


def test_invite_flood_over_capacity_gets_503_and_the_live_call_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    async def body(srv: Served) -> None:
        live = MrcpClient(srv.uri)
        await live.connect()
        await recognize(live, TRANSCRIBE, ("Speech-Complete-Timeout", "300"), ("Speech-Incomplete-Timeout", "300"),
                        ANY_CONFIDENCE)
        sender = asyncio.create_task(live.send_audio(noise(1.5)))
        second = MrcpClient(srv.uri)
        await second.connect()  # max_streams=2: one more call fits
        flood = [MrcpClient(srv.uri) for _ in range(6)]
        results = await asyncio.gather(*(c.connect() for c in flood), return_exceptions=True)
        assert all(isinstance(r, CallRefused) and r.status == 503 and r.retry_after for r in results), results
        for c in flood:
            await c.close()
        await sender
        _, done = await complete(live, timeout_s=15)
        assert done.header("Completion-Cause") == "000 success"
        await live.bye()
        await second.bye()

    run(_chatty, body, caplog)


def test_media_timeout_hangs_up(caplog: pytest.LogCaptureFixture) -> None:
    async def body(srv: Served) -> None:
        client = MrcpClient(srv.uri)
        await client.connect()
        async with asyncio.timeout(10):
            await client.hung_up.wait()
        await client.close()

    run(_chatty, body, caplog, media_timeout_s=1.0)


def test_drain_hangs_up_every_call(caplog: pytest.LogCaptureFixture) -> None:
    async def body(srv: Served) -> None:
        client = MrcpClient(srv.uri)
        await client.connect()
        srv.engine.start_drain()
        with pytest.raises(CallRefused) as refused:
            await MrcpClient(srv.uri).connect()
        assert refused.value.status == 503
        srv.engine.request_finish()
        async with asyncio.timeout(10):
            await client.hung_up.wait()
        await client.close()

    run(_chatty, body, caplog)


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
def test_captured_unimrcp_session_over_sip_tcp(caplog: pytest.LogCaptureFixture, event_loop: str) -> None:
    """The captured UniMRCP client's own bytes (session B: SIP over TCP; its DEFINE-GRAMMAR and RECOGNIZE)
    against the whole server, with only the dialog tag and channel id the server chose put in."""
    captured = [c for c in load_exchange() if c.section == "B" and c.protocol == "sip" and c.from_client]
    invite, ack, bye = (next(c.data for c in captured if c.start_line.startswith(m)) for m in ("INVITE", "ACK", "BYE"))
    define, recognize_ = (c.data for c in mrcp_messages(from_client=True)[:2] if c.section == "A")

    async def read_sip(reader: asyncio.StreamReader) -> SipResponse:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"(?im)^content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        message = parse_message(head + await reader.readexactly(length), datagram=False)
        assert isinstance(message, SipResponse)
        return message

    async def body(srv: Served) -> None:
        sip_reader, sip_writer = await asyncio.open_connection("127.0.0.1", srv.gateway.sip.port)
        sip_writer.write(invite)
        while (ok := await read_sip(sip_reader)).status < 200:
            pass
        assert ok.status == 200
        tag = re.search(r"tag=([^;>\s]+)", ok.header("To") or "").group(1)  # type: ignore[union-attr]
        sip_writer.write(ack.replace(b"1F0c9gmS38XBj", tag.encode()))
        answer = MrcpClient._parse_answer(ok.body)
        old = b"d675692763ff4c54@speechrecog"
        assert len(answer.channel_id) == len(old)  # so the captured message-lengths stay true
        mrcp_reader, mrcp_writer = await asyncio.open_connection("127.0.0.1", answer.mrcp_port)
        mrcp_writer.write(define.replace(old, answer.channel_id.encode()))
        mrcp_writer.write(recognize_.replace(old, answer.channel_id.encode()))
        rtp = MrcpClient(srv.uri)
        rtp.answer = answer
        rtp._rtp, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
        await rtp.send_audio(noise(1.5))  # then RTP stops, as the captured client's does
        reader = MessageReader()
        seen: list[MrcpResponse | MrcpEvent] = []
        async with asyncio.timeout(15):
            while not any(isinstance(m, MrcpEvent) and m.event_name == "RECOGNITION-COMPLETE" for m in seen):
                reader.feed(await mrcp_reader.read(65536))
                while (message := reader.next_message()) is not None:
                    assert not isinstance(message, MrcpRequest)
                    seen.append(message)
        assert [(m.request_id, m.status_code) for m in seen if isinstance(m, MrcpResponse)] == [(1, 200), (2, 200)]
        events = [m for m in seen if isinstance(m, MrcpEvent)]
        assert [e.event_name for e in events] == ["START-OF-INPUT", "RECOGNITION-COMPLETE"]
        assert events[-1].header("Completion-Cause") in {"000 success", "001 no-match"}
        sip_writer.write(bye.replace(b"1F0c9gmS38XBj", tag.encode()))
        assert (await read_sip(sip_reader)).status == 200
        await rtp.close()
        mrcp_writer.close()
        sip_writer.close()

    run(_chatty, body, caplog, event_loop=event_loop)


# ------------------------------------------------------------------------------------------ grammar scoring
GRAMMAR = b"""<?xml version="1.0"?>
<grammar xmlns="http://www.w3.org/2001/06/grammar" version="1.0" root="r" xml:lang="en-US">
  <rule id="r"><one-of>
    <item>pay my bill<tag>out="pay"</tag></item>
    <item>check my balance<tag>out="balance"</tag></item>
  </one-of></rule>
</grammar>"""


def test_finals_use_the_engines_posterior_scores_and_partials_the_spelling() -> None:
    grammar = parse_srgs(GRAMMAR, uri="session:g")
    final = Hypothesis(text="pay my bell", words=(), confidence=0.1, start_s=0, end_s=1,
                       phrase_scores=(("pay my bill", 0.93), ("check my balance", 0.01)))
    matches = score_phrases(final, [grammar])
    assert [(m.phrase.instance, m.confidence) for m in matches] == [("pay", 0.93), ("balance", 0.01)]
    partial = Hypothesis(text="pay my", words=(Word("pay", 0, 0, 0.1), Word("my", 0, 0, 0.1)), confidence=0.1,
                         start_s=0, end_s=1)
    guess = score_phrases(partial, [grammar])
    assert guess[0].phrase.instance == "pay" and 0.5 < guess[0].confidence < 1


# ------------------------------------------------------------------------------------------ the bundled model
@pytest.fixture(scope="module")
def bundled() -> LoadedModel:
    return load_model("bundled", "cpu", warn=False)


def speech(text: str, seed: int) -> np.ndarray:
    """espeak-ng speech at 8 kHz after 0.3 s of silence, ending at the last word (no trailing silence: the
    client stops sending RTP there, as the captured UniMRCP client does at the end of its file)."""
    audio = synthesize(text, VOICE, seed=seed)
    return np.concatenate([np.zeros(2400, np.int16), (np.clip(audio, -1, 1) * 32767).astype(np.int16)])


def test_dictation_result_in_nlsml(bundled: LoadedModel, caplog: pytest.LogCaptureFixture) -> None:
    async def body(srv: Served) -> None:
        client = MrcpClient(srv.uri)
        await client.connect()
        await recognize(client)
        await client.send_audio(speech("i want to pay my bill", 4))
        names, done = await complete(client)
        assert names == ["START-OF-INPUT"]
        assert done.header("Completion-Cause") == "000 success"
        assert done.header("Content-Type") == "application/nlsml+xml"
        root = ElementTree.fromstring(done.body)
        ns = {"n": "urn:ietf:params:xml:ns:mrcpv2"}
        interpretation = root.find("n:interpretation", ns)
        assert interpretation is not None and interpretation.get("grammar") == "builtin:speech/transcribe"
        text = interpretation.findtext("n:input", namespaces=ns) or ""
        assert jiwer.cer("i want to pay my bill", text) < 0.2, text
        assert 0 < float(interpretation.get("confidence") or 0) <= 1
        await client.bye()

    run(lambda: bundled, body, caplog)


def test_save_waveform_saves_the_audio_sent_and_names_it(bundled: LoadedModel, caplog: pytest.LogCaptureFixture,
                                                          tmp_path: Path) -> None:
    """Real speech over L16 (lossless, so the file must hold exactly the samples sent), the bundled model: the
    WAV named by Waveform-URI exists, holds the audio of the request, and the header's size and duration are
    the file's. A second request without Save-Waveform names none."""
    folder = tmp_path / "waveforms"
    pcm = speech("i want to pay my bill", 4)

    async def body(srv: Served) -> None:
        client = MrcpClient(srv.uri, codec="L16")
        await client.connect()
        await recognize(client, TRANSCRIBE, ("Save-Waveform", "true"))
        await client.send_audio(pcm)
        _, done = await complete(client)
        assert done.header("Completion-Cause") == "000 success", done
        path, size_bytes, duration_ms = _waveform_uri(done.header("Waveform-URI"))
        assert path.parent == folder.resolve() and path.is_file()
        assert size_bytes == path.stat().st_size
        with wave.open(str(path), "rb") as w:
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 8000)
            saved = np.frombuffer(w.readframes(w.getnframes()), "<i2")
        sent = np.concatenate([pcm, np.zeros(-len(pcm) % 160, np.int16)])  # the client pads the last packet
        np.testing.assert_array_equal(saved, sent)
        assert duration_ms == round(len(saved) / 8)
        assert oct(folder.stat().st_mode & 0o777) == "0o700" and oct(path.stat().st_mode & 0o777) == "0o600"

        await recognize(client, TRANSCRIBE, ("No-Input-Timeout", "300"))
        _, again = await complete(client, timeout_s=10)
        assert again.header("Waveform-URI") is None
        assert [p.name for p in folder.iterdir()] == [path.name]
        await client.bye()

    run(lambda: bundled, body, caplog, waveform_dir=folder)


@pytest.mark.parametrize(("said", "expected"), [
    ("pay my bill", "pay"),  # an exact phrase
    ("check my balance", "balance"),
    ("pay my pill", None),  # a near miss: one sound off, below the default Confidence-Threshold 0.5
    ("what is the weather like", None),  # nothing the grammar holds
])
def test_srgs_grammar_match_and_no_match(bundled: LoadedModel, caplog: pytest.LogCaptureFixture, said: str,
                                         expected: str | None) -> None:
    async def body(srv: Served) -> None:
        client = MrcpClient(srv.uri)
        await client.connect()
        defined = await client.request("DEFINE-GRAMMAR", ("Content-Type", "application/srgs+xml"),
                                       ("Content-Id", "<menu>"), body=GRAMMAR)
        assert defined.status_code == 200
        await recognize(client, b"session:menu")
        await client.send_audio(speech(said, 7))
        _, done = await complete(client)
        if expected is None:
            assert done.header("Completion-Cause") == "001 no-match", done.body
        else:
            assert done.header("Completion-Cause") == "000 success", done.body
            assert f"<instance>{expected}</instance>".encode() in done.body
            assert b'grammar="session:menu"' in done.body
        await client.bye()

    run(lambda: bundled, body, caplog)
