"""Hotword context graph: goto/failure/output arcs, bonus take-back and finalize."""

from __future__ import annotations

import pytest

from streaming_model.context_graph import ContextGraph, ContextState
from streaming_model.tokenizer import CharTokenizer

B = 1.5


def run(graph: ContextGraph, tokens: list[int], *, finalize: bool = True) -> tuple[float, ContextState]:
    total, state = 0.0, graph.root
    for tok in tokens:
        score, state = graph.forward_one_step(state, tok)
        total += score
    if finalize:
        score, state = graph.finalize(state)
        total += score
    return total, state


def test_full_match_earns_per_token_bonus() -> None:
    g = ContextGraph([([1, 2, 3], B)])
    assert run(g, [1, 2, 3])[0] == pytest.approx(3 * B)
    assert run(g, [7, 1, 2, 3, 7])[0] == pytest.approx(3 * B)
    assert run(g, [1, 2, 3, 1, 2, 3])[0] == pytest.approx(6 * B)


def test_partial_match_bonus_is_taken_back_on_failure_and_finalize() -> None:
    g = ContextGraph([([1, 2, 3], B)])
    total, state = run(g, [1, 2], finalize=False)
    assert total == pytest.approx(2 * B)  # tentative
    score, state = g.forward_one_step(state, 9)
    assert score == pytest.approx(-2 * B) and state is g.root
    assert run(g, [1, 2])[0] == pytest.approx(0.0)  # finalize takes it back


def test_failure_arc_continues_a_suffix_match() -> None:
    g = ContextGraph([([1, 2, 4], B), ([2, 3], B)])
    total, state = run(g, [1, 2, 3], finalize=False)
    assert state.is_end and state.level == 2  # "ab" failed into "b", then "bc"
    assert total == pytest.approx(2 * B)
    assert run(g, [1, 2, 3])[0] == pytest.approx(2 * B)


def test_completed_shorter_phrase_is_kept_when_the_longer_one_fails() -> None:
    # "abc" and "abcde": stopping at "abcd" keeps abc's bonus, not d's.
    g = ContextGraph([([1, 2, 3], B), ([1, 2, 3, 4, 5], B)])
    assert run(g, [1, 2, 3, 4, 9])[0] == pytest.approx(3 * B)
    assert run(g, [1, 2, 3, 4])[0] == pytest.approx(3 * B)
    assert run(g, [1, 2, 3, 4, 5])[0] == pytest.approx(5 * B)


def test_output_arc_credits_a_phrase_inside_a_longer_partial_match() -> None:
    # "bc" completes inside the unfinished "abcd": its bonus survives the failure.
    g = ContextGraph([([1, 2, 3, 4], B), ([2, 3], B)])
    _total, state = run(g, [1, 2, 3], finalize=False)
    assert state.output is not None and state.output.is_end
    assert run(g, [1, 2, 3, 9])[0] == pytest.approx(2 * B)


def test_per_phrase_boosts() -> None:
    g = ContextGraph([([1, 2], 1.0), ([3, 4], 3.0)])
    assert run(g, [1, 2])[0] == pytest.approx(2.0)
    assert run(g, [3, 4])[0] == pytest.approx(6.0)
    assert g.max_token_score == 3.0


def test_overlapping_text_phrases_with_char_tokens() -> None:
    tok = CharTokenizer()
    g = ContextGraph.from_text([("premium", B), ("premium plus", B), ("plan", B), ("data plan", B)], tok)
    assert g.num_phrases == 4 and g.word_separator == tok.word_separator
    # Each phrase earns its characters and the word end after it (the utterance's end counts as one).
    assert run(g, tok.encode("premium plus"))[0] == pytest.approx((len("premium plus") + 1) * B)
    assert run(g, tok.encode("premium please"))[0] == pytest.approx((len("premium") + 1) * B)
    assert run(g, tok.encode("data plan"))[0] == pytest.approx((len("data plan") + 1) * B)
    assert run(g, tok.encode("my plan is"))[0] == pytest.approx((len("plan") + 1) * B)
    assert run(g, tok.encode("data plot"))[0] == pytest.approx(0.0)


def test_char_phrases_are_whole_final_words() -> None:
    tok = CharTokenizer()
    g = ContextGraph.from_text([("briarwood crossing", B)], tok)
    n = len("briarwood crossing") + 1
    # Run into the next word: no bonus once the word goes on, and the tentative one is taken back.
    total, state = run(g, tok.encode("briarwood crossingcast"), finalize=False)
    assert total == pytest.approx(0.0) and state is g.root
    assert run(g, tok.encode("briarwood crossingcast"))[0] == pytest.approx(0.0)
    # Ended by a space mid-utterance, or by the end of the utterance.
    total, state = run(g, tok.encode("briarwood crossing costs"), finalize=False)
    assert total == pytest.approx(n * B)
    assert run(g, tok.encode("briarwood crossing"))[0] == pytest.approx(n * B)
    # Before the word ends the bonus is tentative: a partial hypothesis ranks with it.
    total, state = run(g, tok.encode("briarwood crossing"), finalize=False)
    assert total == pytest.approx((n - 1) * B) and not state.is_end
    # A phrase may still start inside a longer word (no leading boundary is required).
    assert run(g, tok.encode("the xbriarwood crossing"))[0] == pytest.approx(n * B)


def test_token_id_phrases_get_the_separator_only_when_asked() -> None:
    g = ContextGraph([([1, 2], B), ([3, 0], B)], word_separator=0)
    assert run(g, [1, 2])[0] == pytest.approx(3 * B)  # 1 2 <sep> at the end
    assert run(g, [1, 2, 0, 5])[0] == pytest.approx(3 * B)
    assert run(g, [1, 2, 5])[0] == pytest.approx(0.0)
    assert run(g, [3, 0])[0] == pytest.approx(2 * B)  # already ends with the separator: not doubled


def test_invalid_boost_is_rejected() -> None:
    with pytest.raises(ValueError, match="positive"):
        ContextGraph([([1], 0.0)])
