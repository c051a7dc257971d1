"""The speechrecog resource of one MRCPv2 channel (RFC 6787 §9), sans-I/O.

Theory of operation
-------------------
A :class:`RecognizerChannel` is driven from two sides and never blocks:

* the client's requests (``handle_request``): SET-PARAMS, GET-PARAMS, DEFINE-GRAMMAR, RECOGNIZE, STOP,
  START-INPUT-TIMERS, GET-RESULT; anything else gets 401 (RFC 6787 §5.4);
* recognition evidence from the engine, as plain events: ``speech_started``, ``audio_time_advanced``
  (audio processed, voiced or not), ``partial_hypothesis``, ``final_hypothesis`` and ``dtmf_digit``.

Both produce wire messages (``messages_to_send``) and engine actions (``actions_to_take``:
:class:`RecognitionStarted`, :class:`FinalizeRequested`, :class:`RecognitionEnded`). Time is passed in as
``now`` (seconds, wall clock): every timer of RFC 6787 §9.4 is a deadline, the earliest is
``get_timer()``, and ``handle_timer(now)`` fires what is due. Because the timers run on the caller's
clock and not on audio time, audio that stops arriving (a client that stops sending RTP at the end of
its file) counts as silence: the deadlines pass without any audio event.

States: IDLE -> RECOGNIZING (RECOGNIZE answered 200 IN-PROGRESS) -> RECOGNIZED (RECOGNITION-COMPLETE
sent; GET-RESULT answers the last result) -> IDLE/RECOGNIZING on the next request. STOP returns to IDLE
without a RECOGNITION-COMPLETE (RFC 6787 §9.10: the STOP response lists the stopped request).

Timers while RECOGNIZING (RFC 6787 §9.4):

* No-Input-Timeout: from RECOGNIZE with Start-Input-Timers true, or from START-INPUT-TIMERS; cleared by
  speech or DTMF; expiry completes with ``002 no-input-timeout``.
* Recognition-Timeout: from the start of speech; expiry completes with ``008 success-maxtime`` when the
  best hypothesis matches, else ``015 no-match-maxtime``.
* Speech-Complete-Timeout / Speech-Incomplete-Timeout: silence after the last voiced audio; the first
  applies when the current hypothesis matches an active grammar, the second when it does not. Expiry
  decides the result: ``000 success`` or ``001 no-match``. When only a partial hypothesis is at hand the
  channel asks the engine for its final (:class:`FinalizeRequested`) and waits ``finalize_grace_s``.
* DTMF-Interdigit-Timeout / DTMF-Term-Timeout: after a digit that leaves a DTMF grammar incomplete /
  complete but extendable. A DTMF-Term-Char or a complete non-extendable match ends at once. DTMF and
  speech share one request: whichever completes first decides the result (input mode dtmf or speech).

Failures that the RFC lets a server report either as a 4xx response or as a completed request are
reported as completed requests: RECOGNIZE with an unusable grammar is answered 200 IN-PROGRESS and then
RECOGNITION-COMPLETE with the grammar's Completion-Cause, because UniMRCP's asrclient hangs on a 4xx to
RECOGNIZE.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from protocols.mrcp.errors import (
    IllegalHeaderValue,
    MandatoryHeaderMissing,
    MrcpError,
    MrcpRemoteError,
    UnsupportedEntity,
)
from protocols.mrcp.events import MrcpEvent, MrcpMessage, MrcpRequest, MrcpResponse, RequestState
from protocols.mrcp.grammar import (
    DEFAULT_MAX_PHRASES,
    Grammar,
    GrammarKind,
    GrammarLoader,
    Phrase,
    define_grammar,
    match_dtmf,
    resolve_uri_list,
)
from protocols.mrcp.nlsml import (
    NLSML_CONTENT_TYPE,
    InputMode,
    Interpretation,
    build_nlsml,
    build_no_input,
    build_no_match,
)
from protocols.mrcp.params import VENDOR_AUDIO_END_MS, RecognizerParams, apply_headers, params_to_headers

__all__ = [
    "Action",
    "CompletionCause",
    "FinalizeRequested",
    "GrammarMatch",
    "Hypothesis",
    "LimitExceeded",
    "RecognitionEnded",
    "RecognitionStarted",
    "RecognizerChannel",
    "RecognizerConfig",
    "RecognizerState",
]


class CompletionCause(enum.Enum):
    """Recognizer Completion-Cause values (RFC 6787 §9.4.11)."""

    SUCCESS = "000 success"
    NO_MATCH = "001 no-match"
    NO_INPUT_TIMEOUT = "002 no-input-timeout"
    HOTWORD_MAXTIME = "003 hotword-maxtime"
    GRAMMAR_LOAD_FAILURE = "004 grammar-load-failure"
    GRAMMAR_COMPILATION_FAILURE = "005 grammar-compilation-failure"
    RECOGNIZER_ERROR = "006 recognizer-error"
    SPEECH_TOO_EARLY = "007 speech-too-early"
    SUCCESS_MAXTIME = "008 success-maxtime"
    URI_FAILURE = "009 uri-failure"
    LANGUAGE_UNSUPPORTED = "010 language-unsupported"
    CANCELLED = "011 cancelled"
    SEMANTICS_FAILURE = "012 semantics-failure"
    PARTIAL_MATCH = "013 partial-match"
    PARTIAL_MATCH_MAXTIME = "014 partial-match-maxtime"
    NO_MATCH_MAXTIME = "015 no-match-maxtime"
    GRAMMAR_DEFINITION_FAILURE = "016 grammar-definition-failure"


class RecognizerState(enum.Enum):
    """Where the channel is in its request cycle."""

    IDLE = "idle"
    RECOGNIZING = "recognizing"
    RECOGNIZED = "recognized"


@dataclass(frozen=True, slots=True)
class GrammarMatch:
    """The engine's score of one grammar phrase against the audio (posterior-based, not string matching)."""

    grammar_uri: str
    phrase: Phrase
    confidence: float


@dataclass(frozen=True, slots=True)
class Hypothesis:
    """Recognition evidence: the free transcript, its confidence, and the scored grammar phrases.

    ``audio_end_s``: how far into the request's audio the hypothesis reaches (the engine's audio clock,
    from the first audio of the request); an INTERMEDIATE-RESULT names it so a client can measure latency.
    """

    transcript: str
    confidence: float
    matches: tuple[GrammarMatch, ...] = ()
    audio_end_s: float | None = None


@dataclass(frozen=True, slots=True)
class RecognitionStarted:
    """Engine action: start (or continue) recognizing for this request with these grammars and params."""

    request_id: int
    grammars: tuple[Grammar, ...]
    params: RecognizerParams


@dataclass(frozen=True, slots=True)
class FinalizeRequested:
    """Engine action: the caller stopped speaking; deliver ``final_hypothesis`` now."""

    request_id: int


@dataclass(frozen=True, slots=True)
class RecognitionEnded:
    """Engine action: the request ended (completed or stopped); ``keep_stream`` for continuous mode."""

    request_id: int
    completion_cause: CompletionCause
    keep_stream: bool


@dataclass(frozen=True, slots=True)
class LimitExceeded:
    """Owner action: a request went over a server limit (``limit`` names it) and was refused; count it."""

    limit: str


Action = RecognitionStarted | FinalizeRequested | RecognitionEnded | LimitExceeded


@dataclass(frozen=True, slots=True)
class RecognizerConfig:
    """Server-side settings of a channel (not changeable by the client)."""

    defaults: RecognizerParams = field(default_factory=RecognizerParams)
    nlsml_content_type: str = NLSML_CONTENT_TYPE
    allowed_uri_prefixes: tuple[str, ...] = ()
    grammar_loader: GrammarLoader | None = None
    finalize_grace_s: float = 0.5
    max_grammars: int = 64
    max_dtmf_buffer: int = 64
    max_grammar_bytes: int = 256 * 1024
    max_grammar_phrases: int = DEFAULT_MAX_PHRASES


class RecognizerChannel:
    """One speechrecog channel: requests and evidence in, MRCP messages and engine actions out."""

    def __init__(self, channel_id: str, *, config: RecognizerConfig | None = None) -> None:
        """Args:
        channel_id: the ``<id>@speechrecog`` value negotiated in SDP.
        config: server-side settings; defaults when None.
        """
        self.channel_id = channel_id
        self.config = config or RecognizerConfig()
        self.params = self.config.defaults
        self.state = RecognizerState.IDLE
        self.grammars: dict[str, Grammar] = {}
        self._messages: list[MrcpMessage] = []
        self._actions: list[Action] = []
        self._dtmf_buffer = ""
        self._last_result: tuple[CompletionCause, bytes] | None = None
        self._request_id = 0
        self._request_params = self.params
        self._active: tuple[Grammar, ...] = ()
        self._no_input_deadline: float | None = None
        self._recognition_deadline: float | None = None
        self._dtmf_deadline: float | None = None
        self._finalize_deadline: float | None = None
        self._input_started = False
        self._speech_input = False
        self._last_voice_s: float | None = None
        self._partial: Hypothesis | None = None
        self._final: Hypothesis | None = None
        self._digits = ""
        self._waveform: str | None = None
        self._complete_for: Hypothesis | None = None  # the hypothesis ``_complete_cached`` was worked out for
        self._complete_cached = False

    # ----------------------------------------------------------------------------------------- outputs
    def messages_to_send(self) -> list[MrcpMessage]:
        """Responses and events produced since the last call, in wire order."""
        out, self._messages = self._messages, []
        return out

    def actions_to_take(self) -> list[Action]:
        """Engine actions produced since the last call, in order."""
        out, self._actions = self._actions, []
        return out

    def get_timer(self) -> float | None:
        """The earliest deadline (on the ``now`` clock), or None when nothing is timed."""
        if self.state is not RecognizerState.RECOGNIZING:
            return None
        deadlines = [
            d
            for d in (
                self._no_input_deadline,
                self._recognition_deadline,
                self._endpoint_deadline(),
                self._dtmf_deadline,
                self._finalize_deadline,
            )
            if d is not None
        ]
        return min(deadlines) if deadlines else None

    # ----------------------------------------------------------------------------------------- requests
    def handle_request(self, request: MrcpRequest, now: float) -> None:
        """Process one request for this channel; its response (and any events) go to ``messages_to_send``."""
        method = request.method.upper()
        try:
            if method == "SET-PARAMS":
                self.params = apply_headers(self.params, request.headers)
                self._respond(request, 200)
            elif method == "GET-PARAMS":
                names = tuple(name for name, _ in request.headers if name.lower() != "channel-identifier")
                self._respond(request, 200, headers=params_to_headers(self.params, names))
            elif method == "DEFINE-GRAMMAR":
                self._define_grammar(request)
            elif method == "RECOGNIZE":
                self._recognize(request, now)
            elif method == "STOP":
                self._stop(request)
            elif method == "START-INPUT-TIMERS":
                self._start_input_timers(request, now)
            elif method == "GET-RESULT":
                self._get_result(request)
            else:  # INTERPRET, phrase enrollment, other resources' methods, unknown methods
                self._respond(request, 401)
        except MrcpError as exc:
            if exc.limit is not None:
                self._actions.append(LimitExceeded(exc.limit))
            headers: tuple[tuple[str, str], ...] = ()
            if exc.completion_cause is not None:
                headers = (("Completion-Cause", exc.completion_cause),)
            self._respond(request, exc.status_code, headers=headers)

    def _respond(
        self,
        request: MrcpRequest,
        status_code: int,
        *,
        state: RequestState = RequestState.COMPLETE,
        headers: tuple[tuple[str, str], ...] = (),
        body: bytes = b"",
        content_type: str | None = None,
    ) -> None:
        all_headers = (("Channel-Identifier", self.channel_id), *headers)
        if body and content_type:
            all_headers = (*all_headers, ("Content-Type", content_type))
        self._messages.append(MrcpResponse(request.request_id, status_code, state, all_headers, body))

    def _define_grammar(self, request: MrcpRequest) -> None:
        if self.state is RecognizerState.RECOGNIZING:
            self._respond(request, 402)
            return
        self.state = RecognizerState.IDLE
        content_id = request.header("Content-Id")
        if content_id is None:
            raise MandatoryHeaderMissing("DEFINE-GRAMMAR needs a Content-Id")
        content_id = content_id.strip("<>")
        if not request.body:
            self.grammars.pop(content_id, None)  # an empty DEFINE-GRAMMAR removes the grammar
        else:
            if content_id not in self.grammars and len(self.grammars) >= self.config.max_grammars:
                raise IllegalHeaderValue(f"more than {self.config.max_grammars} grammars on one channel")
            self.grammars[content_id] = self._compile(
                request.header("Content-Type"), request.body, content_id
            )
        self._respond(request, 200, headers=(("Completion-Cause", CompletionCause.SUCCESS.value),))

    def _compile(self, content_type: str | None, body: bytes, content_id: str) -> Grammar:
        return define_grammar(
            content_type,
            body,
            content_id=content_id,
            session_grammars=self.grammars,
            allowed_uri_prefixes=self.config.allowed_uri_prefixes,
            loader=self.config.grammar_loader,
            max_bytes=self.config.max_grammar_bytes,
            max_phrases=self.config.max_grammar_phrases,
        )

    def _request_grammars(self, request: MrcpRequest) -> tuple[Grammar, ...]:
        content_type = (request.header("Content-Type") or "").split(";", 1)[0].strip().lower()
        if not request.body:
            # No grammar named: free dictation, so a bare RECOGNIZE still transcribes.
            return (Grammar(uri="builtin:speech/transcribe", kind=GrammarKind.TRANSCRIBE),)
        if content_type == "text/uri-list":
            return resolve_uri_list(
                request.body,
                session_grammars=self.grammars,
                allowed_uri_prefixes=self.config.allowed_uri_prefixes,
                loader=self.config.grammar_loader,
            )
        if not content_type:
            raise UnsupportedEntity("RECOGNIZE body without a Content-Type")
        content_id = (request.header("Content-Id") or f"request{request.request_id}").strip("<>")
        grammar = self._compile(content_type, request.body, content_id)
        self.grammars[content_id] = grammar
        return (grammar,)

    def _recognize(self, request: MrcpRequest, now: float) -> None:
        if self.state is RecognizerState.RECOGNIZING:
            self._respond(request, 402)
            return
        params = apply_headers(self.params, request.headers)  # per-request values, session defaults kept
        try:
            grammars = self._request_grammars(request)
        except MrcpRemoteError as exc:
            if exc.limit is not None:
                self._actions.append(LimitExceeded(exc.limit))
            cause = (
                CompletionCause(exc.completion_cause)
                if exc.completion_cause
                else CompletionCause.GRAMMAR_LOAD_FAILURE
            )
            self._respond(request, 200, state=RequestState.IN_PROGRESS)
            self._event(request.request_id, "RECOGNITION-COMPLETE", cause, body=b"", extra=())
            self.state = RecognizerState.RECOGNIZED
            self._last_result = (cause, b"")
            return
        self._reset_request()
        self.state = RecognizerState.RECOGNIZING
        self._request_id = request.request_id
        self._request_params = params
        self._active = grammars
        self._respond(request, 200, state=RequestState.IN_PROGRESS)
        self._actions.append(RecognitionStarted(request.request_id, grammars, params))
        if params.start_input_timers:
            self._start_no_input(now)
        if params.clear_dtmf_buffer:
            self._dtmf_buffer = ""
        buffered, self._dtmf_buffer = self._dtmf_buffer, ""
        for digit in buffered:  # type-ahead: keys pressed before RECOGNIZE count for it
            self.dtmf_digit(digit, now)

    def _stop(self, request: MrcpRequest) -> None:
        if self.state is not RecognizerState.RECOGNIZING:
            self._respond(request, 200)
            return
        stopped = self._request_id
        self._respond(request, 200, headers=(("Active-Request-Id-List", str(stopped)),))
        self._actions.append(
            RecognitionEnded(stopped, CompletionCause.CANCELLED, self._request_params.continuous)
        )
        self.state = RecognizerState.IDLE
        self._reset_request()

    def _start_input_timers(self, request: MrcpRequest, now: float) -> None:
        if self.state is not RecognizerState.RECOGNIZING:
            self._respond(request, 402)
            return
        if not self._input_started and self._no_input_deadline is None:
            self._start_no_input(now)
        self._respond(request, 200)

    def _get_result(self, request: MrcpRequest) -> None:
        if self.state is not RecognizerState.RECOGNIZED or self._last_result is None:
            self._respond(request, 402)
            return
        cause, body = self._last_result
        self._respond(
            request,
            200,
            headers=(("Completion-Cause", cause.value),),
            body=body,
            content_type=self.config.nlsml_content_type,
        )

    # ----------------------------------------------------------------------------------------- evidence
    def speech_started(self, now: float) -> None:
        """The engine's voice activity detector heard speech start (barge-in): START-OF-INPUT."""
        if self.state is not RecognizerState.RECOGNIZING or not self._takes_speech():
            return
        self._last_voice_s = now
        if not self._input_started:
            self._begin_input(now, speech=True)

    def audio_time_advanced(self, now: float, *, voiced: bool) -> None:
        """The engine processed more audio; ``voiced`` when it held speech. Then checks deadlines."""
        if self.state is not RecognizerState.RECOGNIZING:
            return
        if voiced and self._speech_input:
            self._last_voice_s = now
        self.handle_timer(now)

    def partial_hypothesis(self, hypothesis: Hypothesis, now: float) -> None:
        """An interim hypothesis while the caller speaks (INTERMEDIATE-RESULT when opted in)."""
        if self.state is not RecognizerState.RECOGNIZING or not self._takes_speech():
            return
        if not hypothesis.transcript.strip():
            return
        if not self._input_started:
            self._begin_input(now, speech=True)
        self._last_voice_s = now
        self._partial = hypothesis
        if self._request_params.partial_results:
            interpretations = self._interpretations(hypothesis, threshold=0.0)
            if interpretations:
                extra: tuple[tuple[str, str], ...] = ()
                if hypothesis.audio_end_s is not None:
                    # An extension event may carry extension parameters (RFC 6787 §6.2.16).
                    audio_end_ms = round(hypothesis.audio_end_s * 1000)
                    extra = (("Vendor-Specific-Parameters", f"{VENDOR_AUDIO_END_MS}={audio_end_ms}"),)
                self._event(
                    self._request_id,
                    "INTERMEDIATE-RESULT",
                    None,
                    body=build_nlsml(interpretations),
                    state=RequestState.IN_PROGRESS,
                    extra=extra,
                )

    def final_hypothesis(
        self, hypothesis: Hypothesis, now: float, *, speech_end_s: float | None = None
    ) -> None:
        """The engine's final hypothesis of the utterance; ``speech_end_s`` is when the voice ended."""
        if self.state is not RecognizerState.RECOGNIZING or not self._takes_speech():
            return
        if hypothesis.transcript.strip() and not self._input_started:
            self._begin_input(now, speech=True)
        if self._final is not None and hypothesis.transcript.strip():
            joined = f"{self._final.transcript} {hypothesis.transcript}".strip()
            hypothesis = Hypothesis(
                joined, min(self._final.confidence, hypothesis.confidence), hypothesis.matches
            )
        self._final = hypothesis
        self._partial = None
        if speech_end_s is not None and self._speech_input:
            self._last_voice_s = speech_end_s
        if self._finalize_deadline is not None:
            self._finalize_deadline = None
            self._complete_speech(maxtime=False)
            return
        self.handle_timer(now)

    def dtmf_digit(self, digit: str, now: float) -> None:
        """A DTMF key (RFC 4733 telephone-event or SIP INFO), one of ``0-9*#A-D``."""
        if self.state is not RecognizerState.RECOGNIZING:
            if len(self._dtmf_buffer) < self.config.max_dtmf_buffer:
                self._dtmf_buffer += digit
            return
        dtmf_grammars = [g for g in self._active if g.is_dtmf]
        if not dtmf_grammars:
            return
        if not self._input_started:
            self._begin_input(now, speech=False)
        params = self._request_params
        if params.dtmf_term_char is not None and digit == params.dtmf_term_char:
            self._complete_dtmf(terminated=True)
            return
        self._digits += digit
        results = [(g, match_dtmf(g, self._digits)) for g in dtmf_grammars]
        if any(m.complete and not m.extendable for _, m in results):
            self._complete_dtmf(terminated=False)
        elif any(m.complete for _, m in results):
            self._dtmf_deadline = now + params.dtmf_term_timeout_s
        elif any(m.extendable for _, m in results):
            self._dtmf_deadline = now + params.dtmf_interdigit_timeout_s
        else:
            self._complete(CompletionCause.NO_MATCH, build_no_match())

    def recognizer_failed(
        self, now: float, *, cause: CompletionCause = CompletionCause.RECOGNIZER_ERROR
    ) -> None:
        """The engine cannot recognize for this request: no capacity or a failed model step (``006
        recognizer-error``), or a Speech-Language it does not speak (``010 language-unsupported``). The
        request completes with ``cause`` (a completed request, not a 4xx; see the module docstring)."""
        if self.state is RecognizerState.RECOGNIZING:
            self._complete(cause, b"")

    def attach_waveform(self, uri: str, *, size_bytes: int, duration_s: float) -> None:
        """The request's audio is being saved (Save-Waveform: true) at ``uri``; the latest call wins.

        RECOGNITION-COMPLETE then carries ``Waveform-URI: <uri>;size=..;duration=..`` (RFC 6787 §9.4.13).
        """
        if self.state is RecognizerState.RECOGNIZING and self._request_params.save_waveform:
            self._waveform = f"<{uri}>;size={size_bytes};duration={round(duration_s * 1000)}"

    # ----------------------------------------------------------------------------------------- timers
    def handle_timer(self, now: float) -> None:
        """Fire every deadline that is due at ``now`` (the earliest decides the request)."""
        while self.state is RecognizerState.RECOGNIZING:
            due = self.get_timer()
            if due is None or due > now:
                return
            if self._finalize_deadline is not None and due == self._finalize_deadline:
                self._finalize_deadline = None
                self._complete_speech(maxtime=False)
            elif due == self._no_input_deadline:
                self._complete(CompletionCause.NO_INPUT_TIMEOUT, build_no_input())
            elif due == self._dtmf_deadline:
                self._complete_dtmf(terminated=False)
            elif due == self._recognition_deadline:
                self._recognition_deadline = None
                self._finish_or_finalize(due, maxtime=True)
            else:
                self._finish_or_finalize(due, maxtime=False)

    def end_of_input(self, now: float) -> None:
        """No more audio will come (the server is shutting down): a request that heard speech completes on
        the engine's next final (or, at the latest, ``finalize_grace_s`` from now, with the best
        hypothesis); one that heard none completes now with ``002 no-input-timeout``. The caller then
        finalises the engine's stream."""
        if self.state is not RecognizerState.RECOGNIZING:
            return
        if not self._input_started or not self._speech_input:
            self._complete(CompletionCause.NO_INPUT_TIMEOUT, build_no_input())
            return
        self._finalize_deadline = now + self.config.finalize_grace_s

    def close(self) -> None:
        """The session ended (BYE, TCP loss): stop any recognition without sending anything."""
        if self.state is RecognizerState.RECOGNIZING:
            self._actions.append(RecognitionEnded(self._request_id, CompletionCause.CANCELLED, False))
        self.state = RecognizerState.IDLE
        self._reset_request()
        self._messages.clear()

    # ----------------------------------------------------------------------------------------- internals
    def _reset_request(self) -> None:
        self._request_id = 0
        self._request_params = self.params
        self._active = ()
        self._no_input_deadline = None
        self._recognition_deadline = None
        self._dtmf_deadline = None
        self._finalize_deadline = None
        self._input_started = False
        self._speech_input = False
        self._last_voice_s = None
        self._partial = None
        self._final = None
        self._digits = ""
        self._waveform = None
        self._complete_for = None
        self._complete_cached = False

    def _takes_speech(self) -> bool:
        return any(not g.is_dtmf for g in self._active)

    def _start_no_input(self, now: float) -> None:
        if self._request_params.no_input_timeout_s > 0:
            self._no_input_deadline = now + self._request_params.no_input_timeout_s

    def _begin_input(self, now: float, *, speech: bool) -> None:
        self._input_started = True
        self._no_input_deadline = None
        if speech:
            self._speech_input = True
            self._last_voice_s = now
            if self._request_params.recognition_timeout_s > 0:
                self._recognition_deadline = now + self._request_params.recognition_timeout_s
        self._event(self._request_id, "START-OF-INPUT", None, body=b"", state=RequestState.IN_PROGRESS)

    def _endpoint_deadline(self) -> float | None:
        if not self._speech_input or self._last_voice_s is None or self._finalize_deadline is not None:
            return None
        best = self._final or self._partial
        # Asked after every RTP frame: whether the hypothesis matches is only worked out when it changes.
        if best is not self._complete_for:
            self._complete_for = best
            self._complete_cached = best is not None and bool(
                self._interpretations(best, threshold=self._request_params.confidence_threshold)
            )
        complete = self._complete_cached
        params = self._request_params
        timeout = params.speech_complete_timeout_s if complete else params.speech_incomplete_timeout_s
        return self._last_voice_s + timeout

    def _finish_or_finalize(self, due: float, *, maxtime: bool) -> None:
        if not maxtime and self._final is None and self._partial is not None:
            # The silence timer ran out before the engine's endpointer: ask for its final, briefly.
            self._actions.append(FinalizeRequested(self._request_id))
            self._finalize_deadline = due + self.config.finalize_grace_s
            return
        self._complete_speech(maxtime=maxtime)

    def _interpretations(self, hypothesis: Hypothesis, *, threshold: float) -> tuple[Interpretation, ...]:
        active = {g.uri: g for g in self._active if not g.is_dtmf}
        matches = sorted(
            (m for m in hypothesis.matches if m.grammar_uri in active and m.confidence >= threshold),
            key=lambda m: -m.confidence,
        )
        items = [
            Interpretation(
                grammar_uri=m.grammar_uri,
                confidence=m.confidence,
                instance=m.phrase.instance,
                input_text=hypothesis.transcript or m.phrase.text,
                properties=m.phrase.properties,
            )
            for m in matches
        ]
        transcribe = next((g for g in active.values() if g.kind is GrammarKind.TRANSCRIBE), None)
        text = hypothesis.transcript.strip()
        if transcribe is not None and text and hypothesis.confidence >= threshold:
            items.append(Interpretation(transcribe.uri, hypothesis.confidence, text, text))
        return tuple(items[: self._request_params.n_best_list_length])

    def _complete_speech(self, *, maxtime: bool) -> None:
        best = self._final or self._partial
        items = (
            ()
            if best is None
            else self._interpretations(best, threshold=self._request_params.confidence_threshold)
        )
        if items:
            cause = CompletionCause.SUCCESS_MAXTIME if maxtime else CompletionCause.SUCCESS
            self._complete(cause, build_nlsml(items))
        else:
            cause = CompletionCause.NO_MATCH_MAXTIME if maxtime else CompletionCause.NO_MATCH
            self._complete(cause, build_no_match())

    def _complete_dtmf(self, *, terminated: bool) -> None:
        for grammar in (g for g in self._active if g.is_dtmf):
            match = match_dtmf(grammar, self._digits)
            if match.complete:
                phrase = match.phrase or Phrase(self._digits, self._digits)
                item = Interpretation(
                    grammar.uri, 1.0, phrase.instance, self._digits, InputMode.DTMF, phrase.properties
                )
                self._complete(CompletionCause.SUCCESS, build_nlsml((item,)))
                return
        if not self._digits and not terminated:
            self._complete(CompletionCause.NO_INPUT_TIMEOUT, build_no_input())
            return
        self._complete(CompletionCause.NO_MATCH, build_no_match())

    def _complete(self, cause: CompletionCause, body: bytes) -> None:
        request_id = self._request_id
        keep = self._request_params.continuous
        extra = (("Waveform-URI", self._waveform),) if self._waveform else ()
        self._event(request_id, "RECOGNITION-COMPLETE", cause, body=body, extra=extra)
        self._actions.append(RecognitionEnded(request_id, cause, keep))
        self._last_result = (cause, body)
        self.state = RecognizerState.RECOGNIZED
        self._reset_request()

    def _event(
        self,
        request_id: int,
        name: str,
        cause: CompletionCause | None,
        *,
        body: bytes,
        state: RequestState = RequestState.COMPLETE,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> None:
        headers: list[tuple[str, str]] = [("Channel-Identifier", self.channel_id)]
        if cause is not None:
            headers.append(("Completion-Cause", cause.value))
        headers.extend(extra)
        if body:
            headers.append(("Content-Type", self.config.nlsml_content_type))
        self._messages.append(MrcpEvent(name, request_id, state, tuple(headers), body))
