"""Unit tests of the load generator's pure parts: WER, framing, latency lookup, search, URL checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from loadtest import findmax
from loadtest.audio import frame_utterance, mulaw_encode
from loadtest.client import Tally, _result_latency, _Session, plan_files
from loadtest.findmax import Criteria, find_max, judge, next_streams
from loadtest.probes import _CPU_LINE, check_url
from loadtest.runner import RunOptions, RunResult
from loadtest.stats import summarize_ms
from loadtest.wer import load_refs, ref_for, wer_report, word_error_rate
from streaming_model.scoring import normalise


def test_normalize_same_on_both_sides() -> None:
    # The load generator scores with the one normaliser of every tool (streaming_model.scoring, issue 8):
    # apostrophes inside words stay and numbers are spelled out, where its own normaliser once gave
    # "dont" and "9 30".
    assert normalise("Hello, World!  Don't  STOP.") == "hello world don't stop"
    assert normalise("call-back at 9:30?") == "call back at nine thirty"
    assert normalise("  ") == ""


def test_word_error_rate_counts_and_skips_empty_refs() -> None:
    out = word_error_rate([("Thank you, for calling.", "thank you calling"), ("", "noise"),
                           ("how can I help", "how can I help you")])
    assert out["utterances"] == 2
    assert out["ref_words"] == 8
    assert (out["deletions"], out["insertions"], out["substitutions"]) == (1, 1, 0)
    assert out["wer"] == pytest.approx(2 / 8)
    assert word_error_rate([])["wer"] is None


def test_refs_lookup_by_stem_or_relative_path(tmp_path: Path) -> None:
    tsv = tmp_path / "refs.tsv"
    tsv.write_text("# comment\na\tfirst one\nsub/b\tsecond\n\n", encoding="utf-8")
    refs = load_refs(tsv)
    assert ref_for("a.wav", refs) == "first one"
    assert ref_for("sub/b.wav", refs) == "second"
    assert ref_for("other/a.wav", refs) == "first one"
    assert ref_for("c.wav", refs) is None
    tsv.write_text("no tab here\n", encoding="utf-8")
    with pytest.raises(ValueError, match="id<TAB>text"):
        load_refs(tsv)


def test_wer_report_weights_baseline_like_the_load_run() -> None:
    refs = {"a": "one two three four", "b": "five six"}
    load = [("a.wav", "one two three four"), ("a.wav", "one two"), ("b.wav", "five six")]
    rep = wer_report(load, refs, baseline_hyps={"a.wav": "one two three four", "b.wav": "five"})
    assert rep["load"]["wer"] == pytest.approx(2 / 10)
    assert rep["baseline"]["wer"] == pytest.approx(1 / 10)
    assert rep["delta"] == pytest.approx(1 / 10)
    assert wer_report([("z.wav", "x")], refs, baseline_hyps=None)["missing_refs"] == ["z.wav"]


def test_frames_and_frame_ends() -> None:
    x = np.zeros(8000 + 80, dtype=np.int16)  # 1.01 s at 8 kHz
    utt = frame_utterance("f.wav", x, sample_rate_hz=8000, encoding="pcm_s16le")
    assert len(utt.frames) == 51
    assert len(utt.frames[0]) == 320 and len(utt.frames[-1]) == 160
    assert utt.frame_end_s[0] == pytest.approx(0.02)
    assert utt.duration_s == pytest.approx(1.01)
    mu = frame_utterance("f.wav", x, sample_rate_hz=8000, encoding="mulaw")
    assert len(mu.frames[0]) == 160


def test_mulaw_fallback_matches_shared_codec() -> None:
    shared = pytest.importorskip("protocols.audio")
    x = np.arange(-32768, 32768, dtype=np.int16)
    assert mulaw_encode(x) == bytes(shared.mulaw_encode(x))


def _session(frames_sent: int) -> _Session:
    utt = frame_utterance("f.wav", np.zeros(800, dtype=np.int16), sample_rate_hz=8000, encoding="pcm_s16le")
    send_times = np.arange(len(utt.frames), dtype=np.float64) * 0.02 + 100.0
    return _Session(utterance=utt, send_times=send_times, frames_sent=frames_sent)


@pytest.mark.parametrize(("audio_end_ms", "frame"), [(20, 0), (40, 1), (41, 2), (0, 0), (100, 4)])
def test_latency_uses_the_frame_holding_audio_end(audio_end_ms: float, frame: int) -> None:
    tally = Tally()
    latency = _result_latency(_session(5), {"type": "partial", "audio_end_ms": audio_end_ms}, 101.0, tally)
    assert latency == pytest.approx(101.0 - (100.0 + 0.02 * frame))
    assert tally.counts["overruns"] == 0


def test_overrun_when_audio_end_beyond_sent() -> None:
    tally = Tally()
    assert _result_latency(_session(5), {"type": "partial", "audio_end_ms": 100.5}, 101.0, tally) is not None
    assert _result_latency(_session(5), {"type": "partial", "audio_end_ms": 102}, 101.0, tally) is None
    assert tally.counts["overruns"] == 1
    assert tally.overrun_examples[0]["audio_sent_ms"] == pytest.approx(100.0)
    assert _result_latency(_session(5), {"type": "final"}, 101.0, tally) is None
    assert tally.errors["client.missing_audio_end_ms"] == 1


def test_plan_files_one_pass() -> None:
    assert plan_files(0, num_streams=1, num_files=3, one_pass=True) == [0, 1, 2]
    assert [plan_files(i, num_streams=2, num_files=3, one_pass=True) for i in range(2)] == [[0, 2], [1]]
    assert [plan_files(i, num_streams=4, num_files=2, one_pass=True) for i in range(4)] == [[0], [1], [0], [1]]
    assert plan_files(0, num_streams=4, num_files=2, one_pass=False) is None


def _report(p99_ms: float, **extra: Any) -> dict[str, Any]:
    r: dict[str, Any] = {
        "latency_ms": {"partial": {"count": 10, "p99_ms": p99_ms}}, "errors": {"total": 0, "by_code": {}},
        "rejections": {"total": 0, "by_kind": {}}, "overruns": {"count": 0}, "wer": None,
        "config": {"processes_used": 1}, "wall_s": 1.0, "client_send_lag_ms": {}, "counts": {}, "cpu": {},
    }
    r.update(extra)
    return r


def test_judge() -> None:
    c = Criteria(p99_ms=150, max_wer_delta=0.01)
    assert judge(_report(149.0), c) == []
    assert judge(_report(151.0), c)
    assert judge(_report(10.0, errors={"total": 1, "by_code": {"x": 1}}), c)
    assert judge(_report(10.0, rejections={"total": 1, "by_kind": {}}), c)
    assert judge(_report(10.0, wer={"delta": 0.05, "load": {}, "baseline": {}}), c)


def test_next_streams_exponential_then_bisect() -> None:
    assert next_streams(lo=0, hi=None, start=1, max_streams=64, tolerance=0) == 1
    assert next_streams(lo=8, hi=None, start=1, max_streams=64, tolerance=0) == 16
    assert next_streams(lo=64, hi=None, start=1, max_streams=64, tolerance=0) is None
    assert next_streams(lo=8, hi=16, start=1, max_streams=64, tolerance=0) == 12
    assert next_streams(lo=15, hi=16, start=1, max_streams=64, tolerance=0) is None
    assert next_streams(lo=100, hi=104, start=1, max_streams=1024, tolerance=0.05) is None


def test_find_max_search_sequence(monkeypatch: pytest.MonkeyPatch) -> None:
    tried: list[int] = []

    def fake_run(opts: RunOptions, **_: Any) -> RunResult:
        tried.append(opts.streams)
        return RunResult(report=_report(10.0 * opts.streams), samples_s={}, hypotheses=[])

    monkeypatch.setattr(findmax, "run_load", fake_run)
    opts = RunOptions(url="ws://127.0.0.1:1/v1/stream", audio_dir=Path("."))
    answer, trials, best = find_max(opts, Criteria(p99_ms=150), utterances=[], baseline_hyps=None,
                                    tolerance=0, cooldown_s=0)
    assert answer == 15
    assert tried == [1, 2, 4, 8, 16, 12, 14, 15]
    assert [t["passed"] for t in trials] == [True, True, True, True, False, True, True, True]
    assert best is not None


def test_check_url_loopback_only_unless_allowed() -> None:
    check_url("ws://127.0.0.1:8080/v1/stream", schemes=("ws",), allow_remote=False)
    check_url("ws://localhost:8080/v1/stream", schemes=("ws",), allow_remote=False)
    check_url("ws://[::1]:8080/v1/stream", schemes=("ws",), allow_remote=False)
    with pytest.raises(ValueError, match="loopback"):
        check_url("ws://10.0.0.1:8080/", schemes=("ws",), allow_remote=False)
    with pytest.raises(ValueError, match="scheme"):
        check_url("http://127.0.0.1/", schemes=("ws",), allow_remote=False)
    check_url("ws://10.0.0.1:8080/", schemes=("ws",), allow_remote=True)


def test_metrics_cpu_line() -> None:
    body = "# HELP process_cpu_seconds_total x\nprocess_cpu_seconds_total 12.5\nprocess_cpu_seconds_totalx 1\n"
    assert [float(v) for v in _CPU_LINE.findall(body)] == [12.5]


def test_summarize_ms() -> None:
    s = summarize_ms(np.linspace(0.0, 1.0, 101))
    assert s["count"] == 101 and s["p50_ms"] == pytest.approx(500.0) and s["max_ms"] == pytest.approx(1000.0)
    assert summarize_ms([])["p99_ms"] is None
