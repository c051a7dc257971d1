"""Incremental CTC decoding per stream: hypotheses with word timings and confidences.

A decoder consumes the log-probabilities of each step as they come and can report the current
utterance's hypothesis (a partial) at any time; :meth:`StreamDecoder.finalize` closes the utterance (a
final) and starts the next one, keeping the stream's frame clock. Endpointing reads
``trailing_silence_frames``: frames since the last emitted token (a non-blank token counts as speech, as in
sherpa-onnx's endpoint rules).

Dimension legend: T frames, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from streaming_model.tokenizer import BLANK_ID, Tokenizer


@dataclass(frozen=True, slots=True)
class Word:
    text: str
    start_s: float
    end_s: float
    confidence: float


@dataclass(frozen=True, slots=True)
class Hypothesis:
    """One utterance's text so far. Times are seconds from the start of the stream.

    ``stable_words`` (partials): how many leading words are settled; the words after them may change.
    """

    text: str
    words: tuple[Word, ...]
    confidence: float
    start_s: float
    end_s: float
    stable_words: int = 0

    @property
    def is_empty(self) -> bool:
        return not self.words


EMPTY_HYPOTHESIS = Hypothesis(text="", words=(), confidence=0.0, start_s=0.0, end_s=0.0)


@dataclass(slots=True)
class _Token:
    token_id: int
    frame: int  # absolute encoder frame of its first spike frame
    last_frame: int
    prob: float


class StreamDecoder(Protocol):
    """What the engine needs from a per-stream decoder."""

    frames_decoded: int
    trailing_silence_frames: int

    def accept(self, log_probs: np.ndarray) -> None: ...

    def partial(self) -> Hypothesis: ...

    def finalize(self) -> Hypothesis: ...

    @property
    def has_speech(self) -> bool: ...


def words_from_tokens(tokens: list[_Token], tokenizer: Tokenizer, frame_s: float) -> Hypothesis:
    """Group tokens into words (a ``▁`` piece starts a word) with times and confidences."""
    if not tokens:
        return EMPTY_HYPOTHESIS
    words: list[Word] = []
    current: list[_Token] = []

    def flush() -> None:
        text = "".join(tokenizer.piece(t.token_id) for t in current).replace("▁", "").strip()
        if text:
            words.append(Word(text=text, start_s=current[0].frame * frame_s,
                              end_s=(current[-1].last_frame + 1) * frame_s,
                              confidence=float(min(t.prob for t in current))))

    for tok in tokens:
        piece = tokenizer.piece(tok.token_id)
        if piece.startswith("▁") and current:
            flush()
            current = []
        if piece.strip("▁") or not current:
            current.append(tok) if piece.strip("▁") else None
    if current:
        flush()
    if not words:
        return EMPTY_HYPOTHESIS
    conf = float(math.exp(sum(math.log(max(w.confidence, 1e-6)) for w in words) / len(words)))
    return Hypothesis(text=" ".join(w.text for w in words), words=tuple(words), confidence=conf,
                      start_s=words[0].start_s, end_s=words[-1].end_s)


@dataclass(slots=True)
class GreedyDecoder:
    """Best path: the most likely token per frame, repeats merged, blanks dropped."""

    tokenizer: Tokenizer
    frame_s: float = 0.04
    frames_decoded: int = 0
    trailing_silence_frames: int = 0
    _prev: int = BLANK_ID
    _tokens: list[_Token] = field(default_factory=list)

    @property
    def has_speech(self) -> bool:
        return bool(self._tokens)

    def accept(self, log_probs: np.ndarray) -> None:
        """Consume (T, V) log-probabilities of the next T frames."""
        if log_probs.shape[0] == 0:
            return
        best = log_probs.argmax(axis=-1)  # (T,)
        best_lp = np.take_along_axis(log_probs, best[:, None], axis=-1)[:, 0]  # (T,)
        for t in range(best.shape[0]):
            tok = int(best[t])
            frame = self.frames_decoded + t
            if tok == BLANK_ID:
                self.trailing_silence_frames += 1
            elif tok == self._prev and self._tokens:
                last = self._tokens[-1]
                last.last_frame = frame
                last.prob = max(last.prob, float(np.exp(best_lp[t])))
                self.trailing_silence_frames = 0
            else:
                self._tokens.append(_Token(tok, frame, frame, float(np.exp(best_lp[t]))))
                self.trailing_silence_frames = 0
            self._prev = tok
        self.frames_decoded += best.shape[0]

    def partial(self) -> Hypothesis:
        """The best path so far. Greedy never revises an emitted token, so every word but the last (which
        may still grow) is settled."""
        hyp = words_from_tokens(self._tokens, self.tokenizer, self.frame_s)
        return replace(hyp, stable_words=max(len(hyp.words) - 1, 0)) if hyp.words else hyp

    def finalize(self) -> Hypothesis:
        hyp = words_from_tokens(self._tokens, self.tokenizer, self.frame_s)  # a final is settled whole
        self._tokens = []
        self._prev = BLANK_ID
        return hyp
