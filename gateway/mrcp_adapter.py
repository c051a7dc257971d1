"""The MRCPv2 adapter: SIP sessions, RTP audio and speechrecog channels on the engine's session API.

Theory of operation
-------------------
:class:`MrcpGateway` owns three listeners (SIP on UDP+TCP, MRCP on TCP, one RTP UDP port per call) and is
the SIP server's :class:`protocols.sip.transport.SessionHandler`:

* OPTIONS (a load balancer's probe): 503 + Retry-After while the engine is not ready (draining, model
  restarting), 200 otherwise.
* INVITE: refused with 503 + Retry-After (``OverloadedError``) when the engine is draining or has no slot
  for one more call; otherwise an RTP port is bound from the allocator, the offer answered
  (:func:`protocols.sdp.offer_answer.answer_offer`) and the answer's recognizer channel registered with
  the MRCP server. A call reserves its engine slot at INVITE time: it counts against capacity until it
  ends, so a RECOGNIZE finds a slot unless other protocols took it meanwhile (then the request completes
  with ``006 recognizer-error``).
* RECOGNIZE (the channel's :class:`RecognitionStarted`): an engine stream is opened for the request with
  the grammars' phrases as hotwords (the one conversion into ``StreamSettings``: :func:`stream_settings`);
  the RTP audio goes into it through a bounded queue (overflow policy: the newest frame is dropped and
  counted, so a slow engine never blocks the datagram callback); its events become the channel's evidence
  calls. A DTMF-only request opens no stream.
* RecognitionEnded: the stream is aborted (its finals are not needed any more), unless the request was
  continuous (Vendor-Specific-Parameters), when the stream and the model's memory carry on to the next
  RECOGNIZE and audio in between is kept.
* The channel's timers run on the event loop's clock (the MRCP server arms them); every RTP frame also
  calls ``audio_time_advanced``, and when RTP stops nothing arrives, so the missing audio counts as
  silence.
* Save-Waveform (RFC 6787 §9.4.26): with a waveform folder configured (``MrcpSettings.waveform_dir``), a
  request with ``Save-Waveform: true`` records the call's RTP audio from RECOGNIZE to its completion
  (:mod:`gateway.waveforms`, a complete WAV after every frame) and the channel is told its URI, size and
  duration after every frame, so RECOGNITION-COMPLETE carries ``Waveform-URI`` whenever it comes. Without
  the folder nothing is saved and no Waveform-URI is sent.
* Source allow-list (``allowed_networks``): SIP requests from elsewhere are answered 403 (UDP) or their
  TCP connection closed, MRCP connections from elsewhere are closed at once; each is counted in
  ``xlgate_auth_failures_total{protocol="sip"|"mrcp", reason="address"}``. With ``digest``, an INVITE
  without valid credentials is challenged (401) by the SIP core; all but the first, credential-less leg
  of a call are counted with their reason.
* The end of a call, whatever comes first (BYE, CANCEL, TCP loss of SIP or MRCP, RTP media timeout,
  drain): the SIP core reports ``SessionTerminated`` and :meth:`MrcpGateway.on_terminated` releases the
  channel, the engine stream (and with it its state-store slot), the RTP port and every task of the call.
  A hang-up is a normal end: logged at INFO, never counted as an error.

TLS (RFC 3261 §26, RFC 6787 §11): with a server ``ssl.SSLContext`` in the settings, SIP is also served over
TLS on ``sips_port`` (dialogs that came that way get ``;transport=tls`` Contacts) and MRCP on a TLS listener
(``mrcp_tls_port``), which the SDP answer names for ``TCP/TLS/MRCPv2`` offers. RTP stays plain (no SRTP).

Limits: every message or packet refused for going over a limit is counted in
``xlgate_limit_exceeded_total{protocol="mrcp", limit=...}``: SIP message bytes and header lines (513 / 400,
by the SIP core), SDP bytes (413), MRCP message bytes and header lines (504), inline grammar bytes and
phrases (``005``), RTP packets per second (dropped), and calls per client address (503 + Retry-After).

Grammar interpretation: a speech grammar's phrases go to the engine as ``DecodingSettings.phrases``; the
runner scores each against the utterance's CTC posteriors when it makes a final (the phrase's CTC
likelihood against the best free path, per token: :mod:`streaming_model.phrase_scoring`), and
:func:`score_phrases` turns those scores into the channel's :class:`GrammarMatch` es; the channel applies
Confidence-Threshold (no-match below it).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import difflib
import logging
import re
import ssl
import uuid
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.auth import AuthFailure
from gateway.engine import Engine, Stream, StreamClosedError
from gateway.limits import AddressSessions
from gateway.metrics import Metrics
from gateway.session import (
    DecodingSettings,
    EndpointingSettings,
    Hotword,
    Outcome,
    ResultEvent,
    SpeechStarted,
    StreamEnded,
    StreamSettings,
    merge_hotwords,
)
from gateway.waveforms import WaveformRecording, WaveformStore
from protocols.allowlist import NetworkAllowList
from protocols.errors import OverloadedError
from protocols.mrcp.codec import DEFAULT_MAX_HEADERS as MRCP_DEFAULT_MAX_HEADERS
from protocols.mrcp.grammar import Grammar, GrammarKind
from protocols.mrcp.recognizer import (
    Action,
    CompletionCause,
    FinalizeRequested,
    GrammarMatch,
    Hypothesis,
    LimitExceeded,
    RecognitionEnded,
    RecognitionStarted,
    RecognizerChannel,
    RecognizerConfig,
)
from protocols.mrcp.transport import MrcpServer
from protocols.rtp.connection import RtpReceiverConfig
from protocols.rtp.events import AudioReceived, DtmfReceived, MediaTimeout, RtpEvent, SsrcChanged
from protocols.rtp.ports import PortAllocator
from protocols.rtp.transport import RtpEndpoint, open_rtp_endpoint
from protocols.sdp.codec import MAX_SDP_BYTES, SessionDescription, parse_sdp, serialize_sdp
from protocols.sdp.errors import SdpError
from protocols.sdp.offer_answer import AnswerConfig, Negotiation, answer_offer
from protocols.sip.codec import DEFAULT_MAX_HEADERS as SIP_DEFAULT_MAX_HEADERS
from protocols.sip.codec import DEFAULT_MAX_MESSAGE_BYTES as SIP_DEFAULT_MAX_MESSAGE_BYTES
from protocols.sip.connection import SipServerConfig
from protocols.sip.digest import DigestPolicy
from protocols.sip.events import InviteReceived, ReinviteReceived, TerminationReason
from protocols.sip.events import LimitExceeded as SipLimitExceeded
from protocols.sip.transport import SipServer
from streaming_model.decoding import Hypothesis as EngineHypothesis

__all__ = ["MrcpGateway", "MrcpSettings", "score_phrases", "stream_settings"]

log = logging.getLogger("xlgate.mrcp")

PROTOCOL = "mrcp"
MAX_QUEUED_FRAMES = 250  # 5 s of 20 ms RTP frames waiting for the engine; newer frames are dropped beyond
MAX_HOTWORD_PHRASES = 256  # the grammar phrases given to the decoder as hotwords (all are scored)
GRAMMAR_HOTWORD_BOOST = 2.0
JITTER_SAMPLE_FRAMES = 50  # observe the jitter estimate once a second of 20 ms frames


@dataclass(frozen=True, slots=True, kw_only=True)
class MrcpSettings:
    """Where the MRCP side listens and what it advertises.

    Attributes:
        host: the address the SIP, MRCP and RTP sockets bind to.
        advertise_address: written into SDP and Contact; empty means ``host`` (or 127.0.0.1 when ``host``
            is a wildcard address).
        sip_port, mrcp_port: 0 picks free ports.
        rtp_port_low, rtp_port_high: the RTP port range.
        media_timeout_s: a call whose RTP stays silent this long is hung up.
        languages: primary language subtags the model speaks; another Speech-Language completes the
            RECOGNIZE with ``010 language-unsupported``.
        defaults: the server's stream defaults (decoding method, hotwords, endpointing).
        recognizer: server-side settings of every channel (grammar limits among them).
        tls: a server context: SIP over TLS on ``sips_port`` (0 = off) and MRCP over TLS on
            ``mrcp_tls_port`` (0 = any free port); None serves neither.
        max_sessions_per_address: calls one client address may hold at once (0 = no bound).
        sip_max_message_bytes, sip_max_headers, max_sdp_bytes, mrcp_max_message_bytes, mrcp_max_headers,
            rtp_max_packets_per_s: the limits named (docs/operations.md "Limits").
        waveform_dir: where the audio of a RECOGNIZE with ``Save-Waveform: true`` is saved (WAV, named in
            RECOGNITION-COMPLETE's Waveform-URI); None: never saved (Save-Waveform is accepted, and no
            Waveform-URI is sent, as RFC 6787 §9.4.26 allows).
        waveform_max_files, waveform_max_bytes: the folder's budget (oldest recordings deleted first).
        allowed_networks: the peers allowed on SIP and MRCP; None allows every address.
        digest: SIP digest authentication of INVITEs; None: none.
    """

    host: str = "127.0.0.1"
    advertise_address: str = ""
    sip_port: int = 5060
    mrcp_port: int = 1544
    rtp_port_low: int = 20000
    rtp_port_high: int = 29999
    media_timeout_s: float = 30.0
    languages: tuple[str, ...] = ("en",)
    defaults: StreamSettings = field(default_factory=StreamSettings)
    recognizer: RecognizerConfig = field(default_factory=RecognizerConfig)
    tls: ssl.SSLContext | None = None
    sips_port: int = 5061
    mrcp_tls_port: int = 0
    max_sessions_per_address: int = 0
    sip_max_message_bytes: int = SIP_DEFAULT_MAX_MESSAGE_BYTES
    sip_max_headers: int = SIP_DEFAULT_MAX_HEADERS
    max_sdp_bytes: int = MAX_SDP_BYTES
    mrcp_max_message_bytes: int = 1 << 20
    mrcp_max_headers: int = MRCP_DEFAULT_MAX_HEADERS
    rtp_max_packets_per_s: float = 200.0
    waveform_dir: Path | None = None
    waveform_max_files: int = 1000
    waveform_max_bytes: int = 1 << 30
    allowed_networks: NetworkAllowList | None = None
    digest: DigestPolicy | None = None

    @property
    def advertised(self) -> str:
        """The address peers are told to use."""
        if self.advertise_address:
            return self.advertise_address
        if self.host in {"0.0.0.0", "::", ""}:
            return "127.0.0.1"
        return self.host


# -- the edge: a RECOGNIZE's grammars and params in, session types out ---------------------------------------
def stream_settings(started: RecognitionStarted, defaults: StreamSettings, *, sample_rate_hz: int) -> StreamSettings:
    """A RECOGNIZE request's stream settings: the one conversion of this protocol.

    The grammars' phrases become hotwords (merged after the server's own) and the closed set every final
    is scored against (``DecodingSettings.phrases``, by the model's posteriors); the engine's endpointer waits
    the request's Speech-Complete-Timeout (when shorter than the server's silence), so a final is usually
    at hand when the channel's own silence timer runs out.
    """
    texts = [p.text for g in started.grammars if g.kind is GrammarKind.PHRASES for p in g.phrases if p.text.strip()]
    unique = tuple(dict.fromkeys(texts))
    phrases = [Hotword(text, GRAMMAR_HOTWORD_BOOST) for text in unique]
    silence_s = defaults.endpointing.silence_s
    if started.params.speech_complete_timeout_s > 0:
        silence_s = min(silence_s, started.params.speech_complete_timeout_s)
    return StreamSettings(
        sample_rate_hz=sample_rate_hz,
        interim_results=True,  # partials drive START-OF-INPUT and the silence timers
        endpointing=EndpointingSettings(enabled=True, silence_s=silence_s,
                                        max_utterance_s=defaults.endpointing.max_utterance_s),
        decoding=DecodingSettings(method=defaults.decoding.method, beam_size=defaults.decoding.beam_size,
                                  hotwords=merge_hotwords(defaults.decoding.hotwords,
                                                          phrases[:MAX_HOTWORD_PHRASES]),
                                  phrases=unique),
    )


_WORD = re.compile(r"[a-z0-9']+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _align_score(phrase: list[str], heard: list[tuple[str, float]]) -> float:
    """Best monotonic alignment of phrase words to heard words, summing similarity x word confidence;
    normalised by the longer of the two, so missing and extra words both cost."""
    if not phrase or not heard:
        return 0.0
    rows, cols = len(phrase), len(heard)
    best = [[0.0] * (cols + 1) for _ in range(rows + 1)]  # best[i][j]: phrase[:i] against heard[:j]
    for i in range(1, rows + 1):
        for j in range(1, cols + 1):
            word, confidence = heard[j - 1]
            similarity = difflib.SequenceMatcher(None, phrase[i - 1], word).ratio()
            best[i][j] = max(best[i - 1][j], best[i][j - 1], best[i - 1][j - 1] + similarity * confidence)
    return best[rows][cols] / max(rows, cols)


def score_phrases(hypothesis: EngineHypothesis, grammars: Iterable[Grammar]) -> tuple[GrammarMatch, ...]:
    """Score every phrase of the closed speech grammars against what the engine recognised.

    A final carries the engine's posterior scores of the phrases (``phrase_scores``, CTC likelihoods of
    each phrase against the utterance's posteriors); those are used as they are. A partial has none: its
    phrases are scored by aligning their words with the partial's words (similarity of the spelling), which
    only serves the silence timers' guess whether the utterance is complete so far and INTERMEDIATE-RESULT.

    Returns:
        One :class:`GrammarMatch` per phrase that scores above zero, best first.
    """
    posterior = dict(hypothesis.phrase_scores)
    heard = [(w, 1.0) for w in _words(hypothesis.text)]
    matches = []
    for grammar in grammars:
        if grammar.kind is not GrammarKind.PHRASES:
            continue
        for phrase in grammar.phrases:
            if posterior:
                score = posterior.get(phrase.text, 0.0)
            else:
                score = _align_score(_words(phrase.text), heard)
            if score > 0:
                matches.append(GrammarMatch(grammar.uri, phrase, round(score, 3)))
    matches.sort(key=lambda m: -m.confidence)
    return tuple(matches)


# -- one recognition (an engine stream) and one call ---------------------------------------------------------
class _Recognition:
    """An engine stream serving a channel's RECOGNIZE request(s), with its audio queue and two tasks."""

    def __init__(self, stream: Stream, started: RecognitionStarted) -> None:
        self.stream = stream
        self.started = started
        self.frames: asyncio.Queue[npt.NDArray[np.int16]] = asyncio.Queue(MAX_QUEUED_FRAMES)
        self.last_partial = ""
        self.tasks: list[asyncio.Task[None]] = []
        self.dropped_frames = 0


class _Call:
    """One SIP dialog: its recognizer channel(s), its RTP endpoint, and the recognition in progress."""

    def __init__(self, dialog_id: str, negotiation: Negotiation, endpoint: RtpEndpoint) -> None:
        self.dialog_id = dialog_id
        self.negotiation = negotiation
        self.endpoint = endpoint
        self.address = ""  # the client address its session counts against (set once admitted)
        self.rate_limited_counted = 0  # RTP packets dropped by the rate limit, counted in the metric so far
        self.channel_ids = tuple(c.channel_id for c in negotiation.channels)
        self.audio_channel = self.channel_ids[0]  # audio and DTMF go to the first recognizer channel
        self.recognition: _Recognition | None = None
        self.recording: WaveformRecording | None = None  # the current request's saved audio (Save-Waveform)
        self.ended = False
        self.frames = 0


class MrcpGateway:
    """The SIP + MRCP + RTP listeners and the calls they carry (see the module docstring)."""

    def __init__(self, engine: Engine, settings: MrcpSettings, *, sip_t1_s: float | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.metrics: Metrics = engine.metrics
        self.ports = PortAllocator(settings.rtp_port_low, settings.rtp_port_high)
        self.mrcp = MrcpServer(on_actions=self._on_actions, on_channel_lost=self._on_channel_lost,
                               max_message_bytes=settings.mrcp_max_message_bytes,
                               max_headers=settings.mrcp_max_headers, on_limit=self._count_limit,
                               allowed_networks=settings.allowed_networks,
                               on_forbidden=lambda _: self._count_refused("mrcp", AuthFailure.ADDRESS.value))
        sip_config = SipServerConfig(advertise_host=settings.advertised, port=settings.sip_port,
                                     tls_port=settings.sips_port, max_message_bytes=settings.sip_max_message_bytes,
                                     max_headers=settings.sip_max_headers,
                                     allowed_networks=settings.allowed_networks, digest=settings.digest)
        if sip_t1_s is not None:
            sip_config = dataclasses.replace(sip_config, t1_s=sip_t1_s)
        # OPTIONS probes are answered 503 while the engine takes no new stream (drain, model restart), so a
        # load balancer (deploy/kamailio) takes this gateway out of rotation before any INVITE is refused.
        self.sip = SipServer(sip_config, self, on_limit=self._count_sip_limit,
                             on_refused=lambda _, reason: self._count_refused("sip", reason),
                             available=lambda: engine.ready)
        self.addresses = AddressSessions(settings.max_sessions_per_address, metrics=self.metrics,
                                         protocol=PROTOCOL)
        self.waveforms = (None if settings.waveform_dir is None else WaveformStore(
            settings.waveform_dir, max_files=settings.waveform_max_files, max_bytes=settings.waveform_max_bytes))
        self._calls: dict[str, _Call] = {}
        self._by_channel: dict[str, _Call] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._session_version = 0
        engine.add_finish_listener(self.finish_all)

    # -- lifecycle -----------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Bind the MRCP and SIP listeners (and their TLS ones when the settings carry a context)."""
        tls = self.settings.tls
        await self.mrcp.start(self.settings.host, self.settings.mrcp_port)
        if tls is not None:
            await self.mrcp.start_tls(self.settings.host, self.settings.mrcp_tls_port, tls)
        await self.sip.start(self.settings.host, tls=tls if self.settings.sips_port else None)
        log.info("MRCP: SIP on %s:%d (UDP, TCP), MRCP on %d, RTP %d-%d, advertised as %s",
                 self.settings.host, self.sip.port, self.mrcp.port, self.settings.rtp_port_low,
                 self.settings.rtp_port_high, self.settings.advertised)
        if tls is not None:
            log.info("MRCP over TLS: SIP on %s, MRCP on %d", self.sip.tls_port or "off", self.mrcp.tls_port)

    async def aclose(self) -> None:
        """Hang up nothing more: close every listener, release every call and await every task."""
        await self.sip.aclose()
        for dialog_id in list(self._calls):
            await self._release(dialog_id, "server closed")
        await self.mrcp.aclose()
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self.waveforms is not None:
            self.waveforms.close()

    def finish_all(self) -> None:
        """Drain: a live recognition is finalised (its buffered audio recognised, RECOGNITION-COMPLETE with
        its final; its call is hung up once that is sent, in :meth:`_end`); every other call is hung up
        (BYE) now."""
        for dialog_id, call in list(self._calls.items()):
            recognition = call.recognition
            channel = self.mrcp.channel(call.audio_channel)
            if recognition is None or recognition.stream.ended or channel is None:
                self.sip.hangup(dialog_id)
                continue
            channel.end_of_input(self.mrcp.now())
            self.mrcp.flush(call.audio_channel)
            if call.recognition is recognition:  # still recognising: the final decides
                self._spawn(recognition, self._stop_stream(recognition.stream))

    @property
    def call_count(self) -> int:
        """Calls up now (tests count them back to zero)."""
        return len(self._calls)

    @property
    def task_count(self) -> int:
        """Tasks of the calls plus the SIP server's handler calls (tests count them back to zero)."""
        return len(self._tasks) + self.sip.task_count

    def _count_refused(self, protocol: str, reason: str) -> None:
        if reason != AuthFailure.MISSING.value:  # a digest challenge to a first INVITE is the protocol
            self.metrics.auth_failures.labels(protocol, AuthFailure(reason).value).inc()

    # -- SIP session handler -------------------------------------------------------------------------------
    async def on_invite(self, event: InviteReceived) -> bytes:
        """Admit the call, bind its RTP port, answer the offer and register its channel."""
        if not self.engine.ready:
            self.metrics.streams_rejected.labels(PROTOCOL, self.engine.refusal_reason).inc()
            raise OverloadedError("the gateway is draining" if self.engine.refusal_reason == "draining"
                                  else "the model is restarting")
        address = event.flow.remote[0]
        if self.addresses.full(address):
            self.addresses.refused()
            log.info("call from %s refused: %d calls from that address", address, self.addresses.live(address))
            raise OverloadedError(f"{self.addresses.max_per_address} calls from one address")
        reserved = sum(1 for call in self._calls.values() if call.recognition is None)
        if not self.engine.has_capacity(reserved + 1):
            self.metrics.streams_rejected.labels(PROTOCOL, "capacity").inc()
            raise OverloadedError(f"at capacity: {len(self._calls)} calls")
        offer = self._parse_offer(event.offer)
        config = self._answer_config()
        ids: dict[str | None, str] = {}

        def channel_id_for(resource: str, cmid: str | None) -> str:
            return ids.setdefault(cmid, uuid.uuid4().hex[:16])

        # A dry negotiation learns the codec before binding (the answer needs the bound port).
        trial = answer_offer(offer, config=config, rtp_port=9, channel_id_for=channel_id_for,
                             session_id=0, session_version=0)
        audio = trial.audio
        assert audio is not None, "answer_offer refuses an offer without usable audio"
        holder: list[_Call] = []
        rtp_config = RtpReceiverConfig(payload_type=audio.payload_type, codec=audio.codec.value,
                                       clock_rate_hz=audio.clock_rate_hz,
                                       telephone_event_payload_type=audio.telephone_event_payload_type,
                                       media_timeout_s=self.settings.media_timeout_s,
                                       max_packets_per_s=self.settings.rtp_max_packets_per_s)
        endpoint = await open_rtp_endpoint(self.settings.host, self.ports, rtp_config,
                                           lambda rtp_event: self._on_rtp(holder, rtp_event))
        try:
            self._session_version += 1
            negotiation = answer_offer(offer, config=config, rtp_port=endpoint.port,
                                       channel_id_for=channel_id_for, session_id=self._session_version,
                                       session_version=1)
            call = _Call(event.dialog_id, negotiation, endpoint)
            # Checked above already, but two INVITEs from one address can both pass that check while their RTP
            # ports are bound: this is the exact count.
            if not self.addresses.acquire(address):
                raise OverloadedError(f"{self.addresses.max_per_address} calls from one address")
            call.address = address
            holder.append(call)
            for channel in negotiation.channels:
                self.mrcp.add_channel(RecognizerChannel(channel.channel_id, config=self.settings.recognizer),
                                      tls_only=channel.tls)
                self._by_channel[channel.channel_id] = call
            self._calls[event.dialog_id] = call
        except BaseException:
            endpoint.close()
            raise
        log.info("call %s: RTP %s/%d Hz on port %d, channel %s", event.dialog_id[:16], audio.codec.value,
                 audio.clock_rate_hz, endpoint.port, call.audio_channel)
        return serialize_sdp(negotiation.answer)

    async def on_reinvite(self, event: ReinviteReceived) -> bytes:
        """Answer a refresh or change with the same port and channels (the codec stays as negotiated)."""
        call = self._calls.get(event.dialog_id)
        if call is None:
            raise OverloadedError("the call is ending")
        known = {c.cmid: c.channel_id.split("@", 1)[0] for c in call.negotiation.channels}
        self._session_version += 1
        negotiation = answer_offer(self._parse_offer(event.offer), config=self._answer_config(),
                                   rtp_port=call.endpoint.port,
                                   channel_id_for=lambda resource, cmid: known.get(cmid, uuid.uuid4().hex[:16]),
                                   session_id=self._session_version, session_version=2)
        return serialize_sdp(negotiation.answer)

    def _parse_offer(self, offer: bytes) -> SessionDescription:
        try:
            return parse_sdp(offer, max_bytes=self.settings.max_sdp_bytes)
        except SdpError as exc:
            if exc.limit is not None:
                self._count_limit(exc.limit)
            raise

    def _answer_config(self) -> AnswerConfig:
        return AnswerConfig(address=self.settings.advertised, mrcp_port=self.mrcp.port,
                            mrcp_tls_port=self.mrcp.tls_port)

    def _count_limit(self, limit: str) -> None:
        self.metrics.limit_exceeded.labels(PROTOCOL, limit).inc()

    def _count_sip_limit(self, event: SipLimitExceeded) -> None:
        log.info("SIP message from %s refused: over the %s limit", event.flow.remote[0], event.limit)
        self._count_limit(event.limit)

    async def on_confirmed(self, dialog_id: str) -> None:
        """The ACK arrived; nothing to do (the MRCP client connects on its own)."""

    async def on_terminated(self, dialog_id: str, reason: TerminationReason) -> None:
        """The call is over: release its channel, stream, slot, RTP port and tasks."""
        await self._release(dialog_id, reason.value)

    async def _release(self, dialog_id: str, why: str) -> None:
        call = self._calls.pop(dialog_id, None)
        if call is None:
            return
        call.ended = True
        for channel_id in call.channel_ids:
            self._by_channel.pop(channel_id, None)
            self.mrcp.remove_channel(channel_id)  # closes the channel: its RecognitionEnded ends the stream
        self._stop_recording(call)
        recognition = call.recognition
        call.recognition = None
        if recognition is not None:
            recognition.stream.abort(Outcome.CLIENT_CLOSED)
            await self._cancel(recognition)
        call.endpoint.close()
        if call.address:
            self.addresses.release(call.address)
        self._count_jitter(call)
        self._count_rate_limited(call)
        log.info("call %s ended: %s", dialog_id[:16], why)

    async def _cancel(self, recognition: _Recognition) -> None:
        current = asyncio.current_task()
        tasks = [t for t in recognition.tasks if t is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- MRCP side -----------------------------------------------------------------------------------------
    def _on_channel_lost(self, channel_id: str) -> None:
        call = self._by_channel.get(channel_id)
        if call is not None:
            log.info("call %s: MRCP connection closed; hanging up", call.dialog_id[:16])
            self.sip.hangup(call.dialog_id)

    def _on_actions(self, channel_id: str, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, LimitExceeded):
                self._count_limit(action.limit)
        call = self._by_channel.get(channel_id)
        if call is None or channel_id != call.audio_channel:
            return
        for action in actions:
            if isinstance(action, RecognitionStarted):
                self._start(call, action)
            elif isinstance(action, FinalizeRequested):
                recognition = call.recognition
                if recognition is not None and not recognition.stream.ended:
                    self._spawn(recognition, self._finalize(recognition.stream))
            elif isinstance(action, RecognitionEnded):
                self._end(call, action)

    def _start(self, call: _Call, started: RecognitionStarted) -> None:
        self._stop_recording(call)
        if started.params.save_waveform and self.waveforms is not None:
            audio = call.negotiation.audio
            assert audio is not None
            call.recording = self.waveforms.open(sample_rate_hz=audio.clock_rate_hz)
            if call.recording is not None:
                self._channel(call).attach_waveform(call.recording.uri, size_bytes=call.recording.size_bytes,
                                                    duration_s=0.0)
        recognition = call.recognition
        if recognition is not None and not recognition.stream.ended:
            recognition.started = started  # continuous: the stream and the model's memory carry on
            recognition.last_partial = ""
            return
        if not any(g.kind is not GrammarKind.DTMF for g in started.grammars):
            return  # DTMF only: the digits come from RTP events, no stream needed
        language = started.params.speech_language.strip().lower()
        if language and language.split("-", 1)[0] not in self.settings.languages:
            log.info("call %s: Speech-Language %r is not served", call.dialog_id[:16], language[:32])
            self._channel(call).recognizer_failed(self.mrcp.now(), cause=CompletionCause.LANGUAGE_UNSUPPORTED)
            self.mrcp.flush(call.audio_channel)
            return
        audio = call.negotiation.audio
        assert audio is not None
        settings = stream_settings(started, self.settings.defaults, sample_rate_hz=audio.clock_rate_hz)
        try:
            (stream,) = self.engine.open_streams(1, settings, protocol=PROTOCOL)
        except OverloadedError as exc:
            log.warning("call %s: no engine stream for RECOGNIZE: %s", call.dialog_id[:16], exc)
            self._channel(call).recognizer_failed(self.mrcp.now())
            self.mrcp.flush(call.audio_channel)
            return
        recognition = _Recognition(stream, started)
        call.recognition = recognition
        self._spawn(recognition, self._feed(recognition))
        self._spawn(recognition, self._forward(call, recognition))

    def _end(self, call: _Call, ended: RecognitionEnded) -> None:
        self._stop_recording(call)
        if self.engine.draining or self.engine.drain_requested.is_set():
            # Its RECOGNITION-COMPLETE is out and the gateway is going away: the drain ends the call (BYE)
            # now, rather than dropping it silently once no stream is left and the server closes.
            self.sip.hangup(call.dialog_id)
        recognition = call.recognition
        if recognition is None or ended.keep_stream:
            return
        call.recognition = None
        cancelled = ended.completion_cause is CompletionCause.CANCELLED
        recognition.stream.abort(Outcome.CLIENT_CLOSED if cancelled else Outcome.COMPLETED)
        for task in recognition.tasks:
            if task is not asyncio.current_task():
                task.cancel()

    @staticmethod
    def _stop_recording(call: _Call) -> None:
        if call.recording is not None:
            call.recording.close()
            call.recording = None

    def _spawn(self, recognition: _Recognition, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        recognition.tasks.append(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda t: recognition.tasks.remove(t) if t in recognition.tasks else None)

    def _channel(self, call: _Call) -> RecognizerChannel:
        channel = self.mrcp.channel(call.audio_channel)
        assert channel is not None, "a live call's channel stays registered until the call is released"
        return channel

    @staticmethod
    async def _stop_stream(stream: Stream) -> None:
        with contextlib.suppress(StreamClosedError):
            await stream.stop(Outcome.DRAINED)

    @staticmethod
    async def _finalize(stream: Stream) -> None:
        with contextlib.suppress(StreamClosedError):
            await stream.finalize()

    async def _feed(self, recognition: _Recognition) -> None:
        """RTP frames into the engine stream, in order; waits when the engine pushes back."""
        with contextlib.suppress(StreamClosedError):
            while True:
                samples = await recognition.frames.get()
                await recognition.stream.feed(samples)
                if recognition.stream.ended:
                    return

    async def _forward(self, call: _Call, recognition: _Recognition) -> None:
        """The stream's events into the channel's evidence calls, until the stream ends."""
        loop = asyncio.get_running_loop()
        async for event in recognition.stream.events():
            if call.ended or self.mrcp.channel(call.audio_channel) is None:
                return
            channel = self._channel(call)
            now = loop.time()
            if isinstance(event, SpeechStarted):
                channel.speech_started(now)
            elif isinstance(event, ResultEvent):
                hypothesis = self._hypothesis(event.hypothesis, recognition.started.grammars)
                if event.is_final:
                    lag_s = max(0.0, recognition.stream.audio_received_s - event.hypothesis.end_s)
                    speech_end_s = now - lag_s if event.hypothesis.words else None
                    channel.final_hypothesis(hypothesis, now, speech_end_s=speech_end_s)
                    recognition.last_partial = ""
                elif event.hypothesis.text != recognition.last_partial:
                    recognition.last_partial = event.hypothesis.text
                    channel.partial_hypothesis(dataclasses.replace(hypothesis, audio_end_s=event.audio_end_s), now)
            elif isinstance(event, StreamEnded):
                if event.outcome is Outcome.ERROR and call.recognition is recognition:
                    call.recognition = None
                    channel.recognizer_failed(now)
                    self.mrcp.flush(call.audio_channel)
                return
            self.mrcp.flush(call.audio_channel)
            if isinstance(event, ResultEvent):
                recognition.stream.record_sent(event)

    @staticmethod
    def _hypothesis(hypothesis: EngineHypothesis, grammars: tuple[Grammar, ...]) -> Hypothesis:
        confidence = min(1.0, max(0.0, hypothesis.confidence))
        return Hypothesis(hypothesis.text, confidence, score_phrases(hypothesis, grammars))

    # -- RTP side ------------------------------------------------------------------------------------------
    def _on_rtp(self, holder: list[_Call], event: RtpEvent) -> None:
        if not holder or holder[0].ended:
            return
        call = holder[0]
        self._count_rate_limited(call)
        if isinstance(event, AudioReceived):
            self._audio(call, event)
        elif isinstance(event, DtmfReceived):
            channel = self.mrcp.channel(call.audio_channel)
            if channel is not None:
                channel.dtmf_digit(event.key, self.mrcp.now())
                self.mrcp.flush(call.audio_channel)
        elif isinstance(event, MediaTimeout):
            log.info("call %s: no RTP for %.0f s; hanging up", call.dialog_id[:16], event.timeout_s)
            self.sip.hangup(call.dialog_id)
        elif isinstance(event, SsrcChanged):
            log.info("call %s: RTP source changed", call.dialog_id[:16])

    def _audio(self, call: _Call, event: AudioReceived) -> None:
        if event.frame.filled:
            self.metrics.rtp_packets_lost.inc()
        else:
            self.metrics.rtp_packets_received.inc()
        call.frames += 1
        if call.frames % JITTER_SAMPLE_FRAMES == 0:
            self._count_jitter(call)
        recording = call.recording
        if recording is not None and recording.append(event.frame.samples):
            # The file is complete after every frame, so RECOGNITION-COMPLETE may name it at any moment.
            channel = self.mrcp.channel(call.audio_channel)
            if channel is not None:
                channel.attach_waveform(recording.uri, size_bytes=recording.size_bytes,
                                        duration_s=recording.duration_s)
        recognition = call.recognition
        if recognition is None or recognition.stream.ended:
            return
        try:
            recognition.frames.put_nowait(event.frame.samples)
        except asyncio.QueueFull:
            recognition.dropped_frames += 1
            if recognition.dropped_frames == 1:
                log.warning("call %s: engine behind, dropping RTP audio", call.dialog_id[:16])
        channel = self.mrcp.channel(call.audio_channel)
        if channel is not None:
            # Voice is evidenced by the engine (speech start, each changed partial, the final's word end
            # times), not by the frames: the engine's speech flag stays up through trailing silence
            # until its final, so a frame alone would postpone Speech-Complete-Timeout forever.
            channel.audio_time_advanced(self.mrcp.now(), voiced=False)
            self.mrcp.flush(call.audio_channel)

    def _count_rate_limited(self, call: _Call) -> None:
        dropped = call.endpoint.receiver.rate_limited_packets
        if dropped > call.rate_limited_counted:
            if call.rate_limited_counted == 0:
                log.warning("call %s: RTP over %.0f packets/s; dropping the excess", call.dialog_id[:16],
                            self.settings.rtp_max_packets_per_s)
            self.metrics.limit_exceeded.labels(PROTOCOL, "rtp_packet_rate").inc(dropped - call.rate_limited_counted)
            call.rate_limited_counted = dropped

    def _count_jitter(self, call: _Call) -> None:
        if call.endpoint.receiver.packets:
            self.metrics.rtp_jitter.observe(call.endpoint.receiver.jitter_s)
