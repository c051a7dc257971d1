"""The speechrecog channel state machine: captured requests in, captured answers out; every timer's
completion cause on a fake clock; grammars and NLSML."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mrcp_fixtures import mrcp_messages

from protocols.mrcp.codec import parse_message, serialize
from protocols.mrcp.errors import GrammarCompilationFailure, GrammarLoadFailure, MrcpError, UriFailure
from protocols.mrcp.events import MrcpEvent, MrcpMessage, MrcpRequest, MrcpResponse, RequestState
from protocols.mrcp.grammar import Phrase, builtin_grammar, match_dtmf, parse_srgs, resolve_uri_list
from protocols.mrcp.nlsml import NLSML_CONTENT_TYPE, NLSML_CONTENT_TYPE_LEGACY
from protocols.mrcp.recognizer import (
    CompletionCause,
    FinalizeRequested,
    GrammarMatch,
    Hypothesis,
    RecognitionEnded,
    RecognitionStarted,
    RecognizerChannel,
    RecognizerConfig,
    RecognizerState,
)

CHANNEL = "d675692763ff4c54@speechrecog"


class FakeClock:
    """Seconds on a clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def _request(
    method: str, request_id: int, *headers: tuple[str, str], body: bytes = b"", channel: str = CHANNEL
) -> MrcpRequest:
    return MrcpRequest(method, request_id, (("Channel-Identifier", channel), *headers), body)


GRAMMAR = (
    b'<?xml version="1.0"?>\n<grammar xmlns="http://www.w3.org/2001/06/grammar" xml:lang="en-US" '
    b'version="1.0" mode="voice" root="digit">\n  <rule id="digit">\n    <one-of>\n      <item>one</item>\n'
    b"      <item>two</item>\n      <item>three</item>\n    </one-of>\n  </rule>\n</grammar>"
)


def _send(channel: RecognizerChannel, request: MrcpRequest, now: float) -> list[MrcpMessage]:
    channel.handle_request(request, now)
    return channel.messages_to_send()


def _events(messages: list[MrcpMessage]) -> list[str]:
    return [m.event_name for m in messages if isinstance(m, MrcpEvent)]


def _cause(messages: list[MrcpMessage]) -> str | None:
    complete = [m for m in messages if isinstance(m, MrcpEvent) and m.event_name == "RECOGNITION-COMPLETE"]
    assert len(complete) == 1, messages
    return complete[0].header("Completion-Cause")


def _recognizing(
    clock: FakeClock, *headers: tuple[str, str], uri: bytes = b"session:g\n", **config: object
) -> RecognizerChannel:
    channel = RecognizerChannel(CHANNEL, config=RecognizerConfig(**config))  # type: ignore[arg-type]
    _send(
        channel,
        _request(
            "DEFINE-GRAMMAR", 1, ("Content-Type", "application/srgs+xml"), ("Content-Id", "g"), body=GRAMMAR
        ),
        clock.now,
    )
    replies = _send(
        channel, _request("RECOGNIZE", 2, ("Content-Type", "text/uri-list"), *headers, body=uri), clock.now
    )
    assert isinstance(replies[0], MrcpResponse) and replies[0].request_state is RequestState.IN_PROGRESS
    return channel


def _match(text: str, confidence: float, uri: str = "session:g") -> Hypothesis:
    return Hypothesis(text, confidence, (GrammarMatch(uri, Phrase(text, text), confidence),))


# --------------------------------------------------------------------------------------------- captured
@pytest.mark.parametrize("section", ["A", "3a", "3b", "3c"])
def test_captured_sessions_get_the_captured_answers(section: str) -> None:
    messages = [m for m in mrcp_messages() if m.section == section]
    channel_id = parse_message(messages[0].data).headers[0][1]  # type: ignore[union-attr]
    channel = RecognizerChannel(channel_id)
    clock = FakeClock()
    for index, captured in enumerate(messages):
        if not captured.from_client:
            continue
        request = parse_message(captured.data)
        assert isinstance(request, MrcpRequest)
        channel.handle_request(request, clock.now)
        replies = channel.messages_to_send()
        expected = parse_message(messages[index + 1].data)
        assert isinstance(expected, MrcpResponse)
        assert len(replies) == 1
        if request.method == "GET-PARAMS":  # we answer every parameter, the demo server none
            assert isinstance(replies[0], MrcpResponse)
            assert (replies[0].request_id, replies[0].status_code) == (expected.request_id, 200)
            assert replies[0].headers[0] == ("Channel-Identifier", channel_id)
        else:
            assert serialize(replies[0]) == messages[index + 1].data
        if request.method == "RECOGNIZE":
            channel.speech_started(clock.advance(0.9))
            soi = channel.messages_to_send()
            assert [serialize(m) for m in soi] == [messages[index + 2].data]
            channel.final_hypothesis(
                _match(
                    "one",
                    0.97,
                    "session:demo-grammar-0" if section != "3c" else "session:request1@form-level",
                ),
                clock.advance(0.4),
            )
            channel.handle_timer(clock.advance(1.0))
            done = channel.messages_to_send()
            assert _cause(done) == "000 success"
            assert done[0].headers[0] == ("Channel-Identifier", channel_id)
            assert done[0].request_id == request.request_id
            assert b"<instance>one</instance>" in done[0].body


def test_recognize_sends_started_action_with_grammars_and_params() -> None:
    clock = FakeClock()
    channel = _recognizing(clock, ("No-Input-Timeout", "7000"), ("Speech-Language", "de-DE"))
    actions = channel.actions_to_take()
    assert isinstance(actions[0], RecognitionStarted)
    assert actions[0].grammars[0].uri == "session:g"
    assert [p.text for p in actions[0].grammars[0].phrases] == ["one", "two", "three"]
    assert actions[0].params.no_input_timeout_s == 7.0 and actions[0].params.speech_language == "de-DE"
    assert channel.params.no_input_timeout_s == 5.0  # per-request values do not become session defaults


# --------------------------------------------------------------------------------------------- timers
def test_no_input_timeout() -> None:
    clock = FakeClock()
    channel = _recognizing(clock, ("No-Input-Timeout", "3000"))
    assert channel.get_timer() == pytest.approx(clock.now + 3.0)
    channel.handle_timer(clock.advance(2.9))
    assert channel.messages_to_send() == []
    channel.handle_timer(clock.advance(0.2))
    messages = channel.messages_to_send()
    assert _cause(messages) == "002 no-input-timeout"
    assert b"<noinput/>" in messages[0].body
    assert channel.state is RecognizerState.RECOGNIZED
    assert isinstance(channel.actions_to_take()[-1], RecognitionEnded)


def test_start_input_timers_false_waits_for_start_input_timers() -> None:
    clock = FakeClock()
    channel = _recognizing(clock, ("Start-Input-Timers", "false"), ("No-Input-Timeout", "1000"))
    assert channel.get_timer() is None
    channel.handle_timer(clock.advance(60))
    assert channel.messages_to_send() == []
    reply = _send(channel, _request("START-INPUT-TIMERS", 3), clock.now)
    assert isinstance(reply[0], MrcpResponse) and reply[0].status_code == 200
    channel.handle_timer(clock.advance(1.01))
    assert _cause(channel.messages_to_send()) == "002 no-input-timeout"


def test_start_input_timers_outside_recognition_is_402() -> None:
    channel = RecognizerChannel(CHANNEL)
    reply = _send(channel, _request("START-INPUT-TIMERS", 1), 0.0)
    assert isinstance(reply[0], MrcpResponse) and reply[0].status_code == 402


def test_speech_complete_timeout_success_counts_missing_audio_as_silence() -> None:
    clock = FakeClock()
    channel = _recognizing(clock, ("Speech-Complete-Timeout", "400"))
    channel.speech_started(clock.advance(0.5))
    assert _events(channel.messages_to_send()) == ["START-OF-INPUT"]
    channel.audio_time_advanced(clock.advance(0.2), voiced=True)
    channel.final_hypothesis(_match("two", 0.9), clock.advance(0.1))
    assert channel.messages_to_send() == []  # speech-complete timer is still running
    # no more audio arrives at all (the client stopped sending RTP): the wall clock decides
    channel.handle_timer(clock.advance(0.29))  # 0.4 s after the last voiced audio is not yet over
    assert channel.messages_to_send() == []
    channel.handle_timer(clock.advance(0.02))
    messages = channel.messages_to_send()
    assert _cause(messages) == "000 success"
    assert messages[0].header("Content-Type") == NLSML_CONTENT_TYPE


def test_speech_incomplete_timeout_gives_no_match() -> None:
    clock = FakeClock()
    channel = _recognizing(clock, ("Speech-Complete-Timeout", "300"), ("Speech-Incomplete-Timeout", "1200"))
    channel.speech_started(clock.now)
    channel.final_hypothesis(Hypothesis("fork", 0.8), clock.advance(0.1))
    channel.handle_timer(clock.advance(0.5))
    assert _events(channel.messages_to_send()) == ["START-OF-INPUT"]
    channel.handle_timer(clock.advance(0.8))
    messages = channel.messages_to_send()
    assert _cause(messages) == "001 no-match" and b"<nomatch/>" in messages[0].body


def test_confidence_threshold_decides_no_match() -> None:
    clock = FakeClock()
    channel = _recognizing(clock, ("Confidence-Threshold", "0.8"), ("Speech-Incomplete-Timeout", "100"))
    channel.speech_started(clock.now)
    channel.final_hypothesis(_match("three", 0.7), clock.now)
    channel.handle_timer(clock.advance(1))
    assert _cause(channel.messages_to_send()) == "001 no-match"


@pytest.mark.parametrize(
    ("hypothesis", "cause"), [(_match("one", 0.9), "008 success-maxtime"), (None, "015 no-match-maxtime")]
)
def test_recognition_timeout(hypothesis: Hypothesis | None, cause: str) -> None:
    clock = FakeClock()
    channel = _recognizing(clock, ("Recognition-Timeout", "2000"), ("Speech-Incomplete-Timeout", "10000"))
    channel.speech_started(clock.advance(0.1))
    for _ in range(25):  # the caller keeps talking
        channel.audio_time_advanced(clock.advance(0.1), voiced=True)
        if hypothesis is not None:
            channel.partial_hypothesis(hypothesis, clock.now)
    assert _cause(channel.messages_to_send()) == cause


def test_partial_only_at_speech_end_asks_the_engine_to_finalize() -> None:
    clock = FakeClock()
    channel = _recognizing(clock, ("Speech-Complete-Timeout", "300"))
    channel.partial_hypothesis(_match("one", 0.9), clock.now)
    assert _events(channel.messages_to_send()) == ["START-OF-INPUT"]
    channel.actions_to_take()
    channel.handle_timer(clock.advance(0.31))
    assert [type(a) for a in channel.actions_to_take()] == [FinalizeRequested]
    assert channel.messages_to_send() == []
    channel.final_hypothesis(_match("one", 0.95), clock.advance(0.05))
    assert _cause(channel.messages_to_send()) == "000 success"


def test_finalize_grace_expiry_uses_the_partial() -> None:
    clock = FakeClock()
    channel = _recognizing(clock, ("Speech-Complete-Timeout", "300"))
    channel.partial_hypothesis(_match("two", 0.9), clock.now)
    channel.handle_timer(clock.advance(0.31))
    channel.handle_timer(clock.advance(0.6))
    messages = channel.messages_to_send()
    assert _cause(messages) == "000 success" and b"<instance>two</instance>" in messages[-1].body


def test_intermediate_results_are_opt_in() -> None:
    clock = FakeClock()
    plain = _recognizing(clock)
    plain.partial_hypothesis(Hypothesis("hello", 0.5), clock.now)
    assert _events(plain.messages_to_send()) == ["START-OF-INPUT"]
    opted = _recognizing(
        clock,
        ("Vendor-Specific-Parameters", "xlgate.partial-results=true"),
        uri=b"builtin:speech/transcribe\n",
    )
    opted.partial_hypothesis(Hypothesis("hello", 0.5), clock.now)
    messages = opted.messages_to_send()
    assert _events(messages) == ["START-OF-INPUT", "INTERMEDIATE-RESULT"]
    assert messages[1].request_state is RequestState.IN_PROGRESS and b"hello" in messages[1].body


def test_dictation_with_transcribe_grammar_and_x_nlsml() -> None:
    clock = FakeClock()
    channel = _recognizing(
        clock, uri=b"builtin:speech/transcribe\n", nlsml_content_type=NLSML_CONTENT_TYPE_LEGACY
    )
    channel.speech_started(clock.now)
    channel.final_hypothesis(Hypothesis("i want to pay my bill", 0.83), clock.advance(1))
    channel.handle_timer(clock.advance(1))
    messages = channel.messages_to_send()
    assert _cause(messages) == "000 success"
    assert messages[-1].header("Content-Type") == "application/x-nlsml"
    assert b"<instance>i want to pay my bill</instance>" in messages[-1].body
    assert b'<input mode="speech">' in messages[-1].body


# --------------------------------------------------------------------------------------------- DTMF
@pytest.mark.parametrize(
    ("uri", "keys", "advance", "cause", "instance"),
    [
        (b"builtin:dtmf/digits?length=4", "1234", 0.0, "000 success", b"1234"),
        (b"builtin:dtmf/digits?minlength=2;maxlength=6", "12", 2.1, "000 success", b"12"),
        (b"builtin:dtmf/digits?minlength=3", "12", 5.1, "001 no-match", None),
        (b"builtin:dtmf/boolean", "1", 0.0, "000 success", b"true"),
        (b"builtin:dtmf/boolean", "7", 0.0, "001 no-match", None),
    ],
)
def test_dtmf_grammars(uri: bytes, keys: str, advance: float, cause: str, instance: bytes | None) -> None:
    clock = FakeClock()
    channel = _recognizing(clock, uri=uri + b"\n")
    for key in keys:
        channel.dtmf_digit(key, clock.advance(0.2))
    channel.handle_timer(clock.advance(advance))
    messages = channel.messages_to_send()
    assert _events(messages)[0] == "START-OF-INPUT"
    assert _cause(messages) == cause
    if instance is not None:
        assert b"<instance>" + instance + b"</instance>" in messages[-1].body
        assert b'<input mode="dtmf">' in messages[-1].body


def test_dtmf_term_char_ends_at_once() -> None:
    clock = FakeClock()
    channel = _recognizing(clock, ("DTMF-Term-Char", "#"), uri=b"builtin:dtmf/digits\n")
    for key in "42#":
        channel.dtmf_digit(key, clock.now)
    messages = channel.messages_to_send()
    assert _cause(messages) == "000 success" and b"<instance>42</instance>" in messages[-1].body


def test_dtmf_beats_speech_when_both_grammars_are_active() -> None:
    clock = FakeClock()
    channel = _recognizing(clock, uri=b"builtin:speech/transcribe\nbuiltin:dtmf/digits?length=2\n")
    channel.speech_started(clock.now)
    channel.partial_hypothesis(Hypothesis("my account number is", 0.6), clock.advance(0.5))
    channel.dtmf_digit("4", clock.advance(0.1))
    channel.dtmf_digit("2", clock.advance(0.1))
    messages = channel.messages_to_send()
    assert _cause(messages) == "000 success" and b'<input mode="dtmf">42</input>' in messages[-1].body


def test_type_ahead_digits_count_for_the_next_recognize() -> None:
    clock = FakeClock()
    channel = RecognizerChannel(CHANNEL)
    channel.dtmf_digit("7", clock.now)
    replies = _send(
        channel,
        _request("RECOGNIZE", 1, ("Content-Type", "text/uri-list"), body=b"builtin:dtmf/digits?length=1"),
        clock.now,
    )
    assert _cause(replies) == "000 success"


# --------------------------------------------------------------------------------------------- methods
def test_stop_mid_utterance_lists_the_request_and_sends_no_complete() -> None:
    clock = FakeClock()
    channel = _recognizing(clock)
    channel.speech_started(clock.now)
    channel.messages_to_send()
    channel.actions_to_take()
    reply = _send(channel, _request("STOP", 3), clock.advance(0.2))
    assert len(reply) == 1 and isinstance(reply[0], MrcpResponse)
    assert reply[0].header("Active-Request-Id-List") == "2"
    assert channel.state is RecognizerState.IDLE and channel.get_timer() is None
    ended = channel.actions_to_take()
    assert isinstance(ended[0], RecognitionEnded) and ended[0].completion_cause is CompletionCause.CANCELLED


def test_second_recognize_and_define_grammar_while_recognizing_are_402() -> None:
    clock = FakeClock()
    channel = _recognizing(clock)
    for request in (
        _request("RECOGNIZE", 3, ("Content-Type", "text/uri-list"), body=b"session:g"),
        _request(
            "DEFINE-GRAMMAR", 4, ("Content-Type", "application/srgs+xml"), ("Content-Id", "h"), body=GRAMMAR
        ),
        _request("GET-RESULT", 5),
    ):
        reply = _send(channel, request, clock.now)
        assert isinstance(reply[0], MrcpResponse) and reply[0].status_code == 402


def test_get_result_after_completion() -> None:
    clock = FakeClock()
    channel = _recognizing(clock, ("No-Input-Timeout", "100"))
    channel.handle_timer(clock.advance(1))
    channel.messages_to_send()
    reply = _send(channel, _request("GET-RESULT", 3), clock.now)
    assert isinstance(reply[0], MrcpResponse) and reply[0].status_code == 200
    assert reply[0].header("Completion-Cause") == "002 no-input-timeout" and b"<noinput/>" in reply[0].body


def test_set_params_then_get_params() -> None:
    channel = RecognizerChannel(CHANNEL)
    _send(
        channel, _request("SET-PARAMS", 1, ("No-Input-Timeout", "7000"), ("Confidence-Threshold", "0.7")), 0.0
    )
    reply = _send(
        channel, _request("GET-PARAMS", 2, ("No-Input-Timeout", ""), ("Confidence-Threshold", "")), 0.0
    )
    assert reply[0].headers[1:] == (("No-Input-Timeout", "7000"), ("Confidence-Threshold", "0.70"))
    bad = _send(channel, _request("SET-PARAMS", 3, ("No-Input-Timeout", "soon")), 0.0)
    assert isinstance(bad[0], MrcpResponse) and bad[0].status_code == 404


@pytest.mark.parametrize("method", ["INTERPRET", "SPEAK", "FROBNICATE"])
def test_unsupported_methods_are_401(method: str) -> None:
    reply = _send(RecognizerChannel(CHANNEL), _request(method, 1), 0.0)
    assert isinstance(reply[0], MrcpResponse) and reply[0].status_code == 401


@pytest.mark.parametrize(
    ("uri", "cause"),
    [
        (b"session:never-defined", "004 grammar-load-failure"),
        (b"builtin:speech/klingon", "004 grammar-load-failure"),
        (b"http://169.254.169.254/latest/meta-data", "009 uri-failure"),
        (b"file:///etc/passwd", "009 uri-failure"),
        (b"builtin:dtmf/digits?length=x", "005 grammar-compilation-failure"),
    ],
)
def test_bad_grammar_in_recognize_completes_the_request(uri: bytes, cause: str) -> None:
    channel = RecognizerChannel(CHANNEL)
    replies = _send(channel, _request("RECOGNIZE", 1, ("Content-Type", "text/uri-list"), body=uri), 0.0)
    assert isinstance(replies[0], MrcpResponse) and (replies[0].status_code, replies[0].request_state) == (
        200,
        RequestState.IN_PROGRESS,
    )
    assert _cause(replies) == cause


def test_define_grammar_failure_is_407_with_cause() -> None:
    channel = RecognizerChannel(CHANNEL)
    reply = _send(
        channel,
        _request(
            "DEFINE-GRAMMAR",
            1,
            ("Content-Type", "application/srgs+xml"),
            ("Content-Id", "x"),
            body=b"<grammar",
        ),
        0.0,
    )
    assert isinstance(reply[0], MrcpResponse) and reply[0].status_code == 407
    assert reply[0].header("Completion-Cause") == "005 grammar-compilation-failure"


def test_allow_listed_uri_uses_the_injected_loader() -> None:
    def loader(uri: str) -> tuple[str, bytes]:
        return "application/srgs+xml", GRAMMAR

    channel = RecognizerChannel(
        CHANNEL,
        config=RecognizerConfig(allowed_uri_prefixes=("https://grammars.example/",), grammar_loader=loader),
    )
    replies = _send(
        channel,
        _request(
            "RECOGNIZE", 1, ("Content-Type", "text/uri-list"), body=b"https://grammars.example/digits.grxml"
        ),
        0.0,
    )
    assert len(replies) == 1 and replies[0].request_state is RequestState.IN_PROGRESS


# --------------------------------------------------------------------------------------------- grammars
def test_srgs_tags_repeat_and_rulerefs() -> None:
    grammar = parse_srgs(
        b"""<grammar xmlns="http://www.w3.org/2001/06/grammar" root="main" tag-format="semantics/1.0">
        <rule id="main"><item repeat="0-1">please</item><ruleref uri="#answer"/></rule>
        <rule id="answer"><one-of>
          <item>yes<tag>out="Y";</tag></item>
          <item>no way<tag>out.answer="N"; out.strength='strong'</tag></item>
          <item>maybe<tag>unsure</tag></item>
        </one-of></rule></grammar>""",
        uri="session:yn",
    )
    by_text = {p.text: p for p in grammar.phrases}
    assert set(by_text) == {"yes", "no way", "maybe", "please yes", "please no way", "please maybe"}
    assert by_text["please yes"].instance == "Y"
    assert by_text["no way"].properties == (("answer", "N"), ("strength", "strong"))
    assert by_text["maybe"].instance == "unsure"


@pytest.mark.parametrize(
    "body",
    [
        b"not xml",
        b"<foo/>",
        b'<grammar root="r"><rule id="r"><ruleref uri="#r"/></rule></grammar>',
        b'<grammar root="r"><rule id="r"><ruleref uri="http://x/y.grxml"/></rule></grammar>',
        b'<grammar root="r"><rule id="r"><item repeat="0-">a b</item><item repeat="0-">c d</item>'
        + b"".join(
            b'<item repeat="0-9"><one-of><item>x</item><item>y</item></one-of></item>' for _ in range(6)
        )
        + b"</rule></grammar>",
        b'<?xml version="1.0" encoding="ATF-8"?><grammar root="r"><rule id="r">a</rule></grammar>',
        b'<grammar root="r"><rule id="r">' + b"<item>" * 5000 + b"a" + b"</item>" * 5000 + b"</rule></grammar>",
    ],
)
def test_bad_srgs_is_a_compilation_failure(body: bytes) -> None:
    with pytest.raises(GrammarCompilationFailure):
        parse_srgs(body, uri="session:x")


def test_builtins_and_uri_refusal() -> None:
    assert builtin_grammar("builtin:dtmf/digits?minlength=2;maxlength=4").max_digits == 4
    boolean = builtin_grammar("builtin:grammar/boolean")
    assert {p.instance for p in boolean.phrases} == {"true", "false"}
    digits = builtin_grammar("builtin:dtmf/digits?length=3")
    assert match_dtmf(digits, "12").extendable and not match_dtmf(digits, "12").complete
    assert match_dtmf(digits, "123").complete and not match_dtmf(digits, "123").extendable
    with pytest.raises(UriFailure):
        resolve_uri_list(b"https://evil.example/g.grxml", session_grammars={})
    with pytest.raises(GrammarLoadFailure):
        resolve_uri_list(b"\n# only a comment\n", session_grammars={})


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_grammar_parsers_raise_only_mrcp_errors(data: bytes) -> None:
    for call in (
        lambda: parse_srgs(data, uri="session:f"),
        lambda: resolve_uri_list(data, session_grammars={}),
        lambda: parse_srgs(b'<grammar root="r"><rule id="r">' + data + b"</rule></grammar>", uri="session:f"),
    ):
        try:
            call()
        except MrcpError:
            pass


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                ["speech", "voiced", "silence", "partial", "final", "dtmf", "timer", "stop", "recognize"]
            ),
            st.floats(min_value=0.0, max_value=3.0),
        ),
        max_size=30,
    )
)
def test_fuzz_evidence_sequences_keep_the_state_machine_consistent(steps: list[tuple[str, float]]) -> None:
    clock = FakeClock()
    channel = _recognizing(clock, uri=b"session:g\nbuiltin:dtmf/digits?length=3\n")
    request_id = 10
    for kind, dt in steps:
        now = clock.advance(dt)
        if kind == "speech":
            channel.speech_started(now)
        elif kind in {"voiced", "silence"}:
            channel.audio_time_advanced(now, voiced=kind == "voiced")
        elif kind == "partial":
            channel.partial_hypothesis(_match("one", 0.6), now)
        elif kind == "final":
            channel.final_hypothesis(_match("two", 0.9), now)
        elif kind == "dtmf":
            channel.dtmf_digit("5", now)
        elif kind == "timer":
            channel.handle_timer(now)
        else:
            request_id += 1
            request = _request(
                kind.upper(),
                request_id,
                ("Content-Type", "text/uri-list"),
                body=b"session:g" if kind == "recognize" else b"",
            )
            channel.handle_request(request, now)
        deadline = channel.get_timer()
        assert (deadline is None) == (channel.state is not RecognizerState.RECOGNIZING) or deadline is None
        for message in channel.messages_to_send():
            assert message.headers[0] == ("Channel-Identifier", CHANNEL)
            parse_message(serialize(message))


def test_save_waveform_names_the_saved_audio() -> None:
    clock = FakeClock()
    channel = _recognizing(clock, ("Save-Waveform", "true"), ("No-Input-Timeout", "1000"))
    channel.attach_waveform("file:///var/lib/xlgate/waveforms/abc.wav", size_bytes=16044, duration_s=1.0)
    channel.handle_timer(clock.advance(1.5))
    messages = channel.messages_to_send()
    assert (
        messages[-1].header("Waveform-URI")
        == "<file:///var/lib/xlgate/waveforms/abc.wav>;size=16044;duration=1000"
    )
    plain = _recognizing(clock, ("No-Input-Timeout", "1000"))
    plain.attach_waveform("file:///x.wav", size_bytes=1, duration_s=0.1)  # not asked for: not sent
    plain.handle_timer(clock.advance(1.5))
    assert plain.messages_to_send()[-1].header("Waveform-URI") is None
