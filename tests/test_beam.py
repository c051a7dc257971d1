"""CTC prefix beam search: greedy equivalence, streaming, timings, hotwords and LM fusion."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from streaming_model.beam import BeamConfig, BeamDecoder
from streaming_model.context_graph import ContextGraph
from streaming_model.decoding import GreedyDecoder, Hypothesis
from streaming_model.ngram import NgramLM
from streaming_model.tokenizer import CharTokenizer

TOK = CharTokenizer()
V = TOK.vocab_size
FRAME_S = 0.04


def log_softmax(x: np.ndarray) -> np.ndarray:
    return x - np.logaddexp.reduce(x, axis=-1, keepdims=True)


def random_log_probs(rng: np.random.Generator, num_frames: int) -> np.ndarray:
    return log_softmax(rng.normal(size=(num_frames, V)) * 3.0)  # (T, V)


def peaky_log_probs(rng: np.random.Generator, num_frames: int) -> np.ndarray:
    """Mostly blank frames (often > 0.999) with spikes that have a runner-up token."""
    logits = rng.normal(size=(num_frames, V))  # (T, V)
    logits[:, 0] += 11.0 + rng.uniform(-4, 2, num_frames)
    spikes = rng.random(num_frames) < 0.3
    logits[spikes, 0] -= 11.0
    logits[spikes, rng.integers(1, V, num_frames)[spikes]] += 6.0
    logits[spikes, rng.integers(1, V, num_frames)[spikes]] += rng.uniform(0, 5, int(spikes.sum()))
    return log_softmax(logits)


def frames(script: list[dict[str, float]]) -> np.ndarray:
    """(T, V) log-probs: each frame's listed symbols ('' = blank, ' ' = space) get their probability,
    the rest share what is left."""
    probs = np.zeros((len(script), V))
    for t, row in enumerate(script):
        for sym, p in row.items():
            probs[t, 0 if sym == "" else TOK.symbols.index(sym)] = p
        rest = 1.0 - probs[t].sum()
        assert rest > 0
        free = probs[t] == 0
        probs[t, free] = rest / free.sum()
    return np.log(probs)


def spell(text: str, *, gap: int = 1) -> list[dict[str, float]]:
    """A clear spelling of ``text``: one confident frame per character, blanks between."""
    out: list[dict[str, float]] = []
    for ch in text:
        out.append({ch: 0.97})
        out += [{"": 0.9999}] * gap
    return out


def greedy_text(lp: np.ndarray) -> str:
    g = GreedyDecoder(TOK, frame_s=FRAME_S)
    g.accept(lp)
    return g.finalize().text


def beam_final(lp: np.ndarray, config: BeamConfig, **kw: object) -> Hypothesis:
    d = BeamDecoder(TOK, config, frame_s=FRAME_S, **kw)  # type: ignore[arg-type]
    d.accept(lp)
    return d.finalize()


@pytest.mark.parametrize("make", [random_log_probs, peaky_log_probs])
def test_viterbi_beam_1_equals_greedy(make: object) -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        lp = make(rng, 80)  # type: ignore[operator]
        assert beam_final(lp, BeamConfig(beam_size=1, merge="max")).text == greedy_text(lp)


def test_sum_beam_1_equals_greedy_on_peaky_output() -> None:
    rng = np.random.default_rng(2)
    for _ in range(20):
        lp = peaky_log_probs(rng, 120)
        assert beam_final(lp, BeamConfig(beam_size=1)).text == greedy_text(lp)


def test_beam_finds_the_more_probable_prefix_greedy_misses() -> None:
    # Each frame: blank 0.4, a 0.35, b 0.24. Best path is blank-blank (""), P=0.16; but P("a") =
    # 0.35^2 + 2*0.35*0.4 = 0.40.
    lp = frames([{"": 0.4, "a": 0.35, "b": 0.24}] * 2)
    assert greedy_text(lp) == ""
    assert beam_final(lp, BeamConfig(beam_size=4)).text == "a"


def test_streaming_in_pieces_equals_one_shot() -> None:
    rng = np.random.default_rng(3)
    lp = peaky_log_probs(rng, 200)
    whole = BeamDecoder(TOK, BeamConfig(beam_size=8), frame_s=FRAME_S)
    whole.accept(lp)
    pieces = BeamDecoder(TOK, BeamConfig(beam_size=8), frame_s=FRAME_S)
    bounds = [0, 1, 4, 5, 17, 60, 61, 64, 140, 200]
    for a, b in itertools.pairwise(bounds):
        pieces.accept(lp[a:b])
        pieces.accept(lp[b:b])  # empty steps are no-ops
    assert pieces.partial() == whole.partial()
    assert pieces.frames_decoded == whole.frames_decoded == 200
    assert pieces.trailing_silence_frames == whole.trailing_silence_frames
    assert pieces.finalize() == whole.finalize()


def test_finalize_starts_a_new_utterance_on_the_same_frame_clock() -> None:
    d = BeamDecoder(TOK, BeamConfig(beam_size=4), frame_s=FRAME_S)
    assert d.partial().is_empty
    first = frames([{"": 0.9999}] * 3 + spell("hi") + [{"": 0.9999}] * 5)  # 12 frames
    d.accept(first)
    assert d.partial().text == "hi"
    assert d.trailing_silence_frames == 6
    hyp = d.finalize()
    assert hyp.text == "hi" and hyp.words[0].start_s == pytest.approx(3 * FRAME_S)
    assert d.partial().is_empty
    d.accept(frames([{"": 0.9999}] * 4 + spell("yo")))
    hyp = d.finalize()
    assert hyp.text == "yo"
    assert hyp.start_s == pytest.approx((12 + 4) * FRAME_S)
    assert hyp.end_s == pytest.approx((12 + 4 + 3) * FRAME_S)
    assert d.frames_decoded == 12 + 8


def test_word_timings_are_monotone_and_inside_the_audio() -> None:
    rng = np.random.default_rng(4)
    lp = peaky_log_probs(rng, 300)
    for beam in (1, 4, 16):
        hyp = beam_final(lp, BeamConfig(beam_size=beam))
        assert hyp.words
        prev_end = 0.0
        for w in hyp.words:
            assert prev_end <= w.start_s < w.end_s <= 300 * FRAME_S
            assert 0.0 < w.confidence <= 1.0
            prev_end = w.end_s
        assert 0.0 < hyp.confidence <= 1.0


def test_word_times_and_confidence_match_greedy_on_clear_input() -> None:
    lp = frames(spell("the cat", gap=2) + [{"": 0.9999}] * 3)
    g = GreedyDecoder(TOK, frame_s=FRAME_S)
    g.accept(lp)
    assert beam_final(lp, BeamConfig(beam_size=8)) == g.finalize()


def test_stable_words_is_the_common_word_prefix_of_the_beam() -> None:
    d = BeamDecoder(TOK, BeamConfig(beam_size=4), frame_s=FRAME_S)
    d.accept(frames(spell("my plan ")))
    assert d.stable_words == 1  # "plan" may still grow
    d.accept(frames([{"i": 0.5, "a": 0.45}, {"": 0.9999}]))  # "is" vs "as": unsure
    texts = {h.text for _, h in d.nbest()}
    assert {"my plan i", "my plan a"} <= texts
    assert d.stable_words == 2
    assert d.partial().stable_words == 2  # what partials carry to the client


def test_greedy_partials_settle_all_but_the_last_word() -> None:
    g = GreedyDecoder(TOK, frame_s=FRAME_S)
    assert g.partial().stable_words == 0
    g.accept(frames(spell("my pla")))
    assert (g.partial().text, g.partial().stable_words) == ("my pla", 1)
    g.accept(frames(spell("n is")))
    assert (g.partial().text, g.partial().stable_words) == ("my plan is", 2)


def ambiguous_plan(p_a: float, p_e: float) -> list[dict[str, float]]:
    """ "pl?n": the vowel frame is ambiguous between a and e."""
    return [{"p": 0.97}, {"": 0.999}, {"l": 0.97}, {"": 0.999}, {"e": p_e, "a": p_a}, {"": 0.999},
            {"n": 0.97}, {"": 0.999}]


def test_hotword_wins_over_a_slightly_better_competitor() -> None:
    lp = frames(ambiguous_plan(p_a=0.35, p_e=0.6))
    assert beam_final(lp, BeamConfig(beam_size=8)).text == "plen"
    graph = ContextGraph.from_text([("plan", 1.5), ("premium plus", 1.5)], TOK)
    assert beam_final(lp, BeamConfig(beam_size=8), context=graph).text == "plan"


def test_hotword_ends_its_word() -> None:
    # "plan?it": the boundary frame is more likely blank (0.59) than space (0.4), so "planit" without
    # hotwords; "plan" as a hotword boosts the space after it (whole words), giving "plan it".
    lp = frames([*spell("plan"), {"": 0.59, " ": 0.4}, *spell("it")])
    assert beam_final(lp, BeamConfig(beam_size=8)).text == "planit"
    graph = ContextGraph.from_text([("plan", 1.5)], TOK)
    assert beam_final(lp, BeamConfig(beam_size=8), context=graph).text == "plan it"


def test_unspoken_hotword_is_not_inserted() -> None:
    lp = frames(ambiguous_plan(p_a=1e-4, p_e=0.97))
    graph = ContextGraph.from_text([("plan", 1.5)], TOK)
    assert beam_final(lp, BeamConfig(beam_size=8), context=graph).text == "plen"
    # A hotword's partial match ("pl") must not leave its bonus behind in a final that lacks it.
    d = BeamDecoder(TOK, BeamConfig(beam_size=8), frame_s=FRAME_S, context=graph)
    d.accept(lp)
    assert d.finalize().text == "plen"


def test_lm_fusion_fixes_a_word_split() -> None:
    # "the?cat": the space frame is more likely blank (0.6) than space (0.4).
    lp = frames([*spell("the"), {"": 0.59, " ": 0.4}, *spell("cat")])
    assert greedy_text(lp) == "thecat"
    assert beam_final(lp, BeamConfig(beam_size=8)).text == "thecat"
    lm = NgramLM.train(["the cat sat on the mat", "the cat ate", "feed the cat", "the dog"] * 5)
    hyp = beam_final(lp, BeamConfig(beam_size=8, lm_weight=0.5, word_insertion_bonus=0.5), lm=lm)
    assert hyp.text == "the cat"
    assert [w.text for w in hyp.words] == ["the", "cat"]


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="beam_size"):
        BeamConfig(beam_size=0)
    with pytest.raises(ValueError, match="merge"):
        BeamConfig(merge="avg")
    with pytest.raises(ValueError, match="expected"):
        BeamDecoder(TOK).accept(np.zeros((2, V + 1)))
