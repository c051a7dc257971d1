"""Incremental CTC decoding per stream: hypotheses with word timings and confidences.

A decoder consumes the log-probabilities of each step as they come and can report the current
utterance's hypothesis (a partial) at any time; :meth:`StreamDecoder.finalize` closes the utterance (a
final) and starts the next one, keeping the stream's frame clock. Endpointing reads
``trailing_silence_frames``: frames since the last emitted token (a non-blank token counts as speech, as in
sherpa-onnx's endpoint rules).

Dimension legend: T frames, V vocabulary.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from streaming_model.tokenizer import BLANK_ID, Tokenizer


class DecodingMethod(enum.StrEnum):
    """The search a stream's decoder runs: :class:`GreedyDecoder`, or a beam search
    (``streaming_model.beam.BeamDecoder``) that can fuse an LM and boost hotwords."""

    GREEDY = "greedy"
    BEAM = "beam"


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
    ``phrase_scores`` (finals): the stream's closed-set phrases scored against the utterance's posteriors.
    """

    text: str
    words: tuple[Word, ...]
    confidence: float
    start_s: float
    end_s: float
    stable_words: int = 0
    # Finals of a stream with closed-set phrases (DecodingSettings.phrases): (phrase, confidence) each,
    # scored against the utterance's CTC posteriors (streaming_model.phrase_scoring).
    phrase_scores: tuple[tuple[str, float], ...] = ()

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


def endpoint_reached(decoder: StreamDecoder, partial: Hypothesis, *, frame_s: float, silence_s: float,
                     max_utterance_s: float) -> bool:
    """The endpoint rule: does the utterance in ``decoder`` end after the frames it has accepted?

    An utterance ends once speech was heard (``partial`` has a word) and either ``silence_s`` of trailing
    silence follow it (frames since the last emitted token, sherpa-onnx's rule 2) or it has lasted
    ``max_utterance_s`` since its first word (rule 3). The serving runner and the dev-set evaluation both
    ask this after every streaming step, so an utterance split in one is split in the other.

    Args:
        decoder: The stream's decoder after accepting the step's frames.
        partial: ``decoder.partial()`` for the same frames (the caller has it already).
        frame_s: Seconds per encoder frame.
        silence_s: Trailing silence that ends an utterance.
        max_utterance_s: Length from the first word at which an utterance is cut.
    """
    if partial.is_empty:
        return False
    trailing_s = decoder.trailing_silence_frames * frame_s
    length_s = decoder.frames_decoded * frame_s - partial.start_s
    return trailing_s >= silence_s or length_s >= max_utterance_s


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
    return Hypothesis(text=" ".join(w.text for w in words), words=tuple(words),
                      confidence=utterance_confidence(words), start_s=words[0].start_s, end_s=words[-1].end_s)


def utterance_confidence(words: tuple[Word, ...] | list[Word]) -> float:
    """An utterance's confidence: the geometric mean of its words' (0 for no words)."""
    if not words:
        return 0.0
    return float(math.exp(sum(math.log(max(w.confidence, 1e-6)) for w in words) / len(words)))


_CONF_EPS = 1e-6
CALIBRATION_INFO_KEY = "confidence_calibration"  # where a checkpoint's info holds the fitted map


def _logit(p: float) -> float:
    q = min(max(p, _CONF_EPS), 1.0 - _CONF_EPS)
    return math.log(q / (1.0 - q))


@dataclass(frozen=True, slots=True)
class ConfidenceCalibration:
    """Platt scaling of word confidences: ``p' = sigmoid(scale * logit(p) + shift)``.

    A raw word confidence is the lowest token posterior in the word, which CTC makes over-confident
    (most spikes are near 1 even in wrong words). The map is increasing (``scale > 0``), so it keeps the
    ranking of words and with it the ROC AUC; it only makes the numbers mean "probability this word is
    right". The identity (1, 0) is the default; a fitted map travels in the checkpoint's ``info``.
    """

    scale: float = 1.0
    shift: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and math.isfinite(self.shift)) or self.scale <= 0:
            raise ValueError(f"confidence calibration needs a finite scale > 0 and a finite shift, "
                             f"got scale={self.scale} shift={self.shift}")

    @property
    def is_identity(self) -> bool:
        return self.scale == 1.0 and self.shift == 0.0

    def word(self, confidence: float) -> float:
        """The calibrated confidence of one word."""
        z = self.scale * _logit(confidence) + self.shift
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))

    def hypothesis(self, hyp: Hypothesis) -> Hypothesis:
        """``hyp`` with every word's confidence mapped and the utterance confidence recomputed."""
        if self.is_identity or hyp.is_empty:
            return hyp
        words = tuple(replace(w, confidence=self.word(w.confidence)) for w in hyp.words)
        return replace(hyp, words=words, confidence=utterance_confidence(words))

    def to_json(self) -> dict[str, float]:
        return {"scale": self.scale, "shift": self.shift}

    @classmethod
    def from_info(cls, info: dict[str, object]) -> ConfidenceCalibration:
        """The map stored under :data:`CALIBRATION_INFO_KEY` in a checkpoint's info (identity if absent)."""
        raw = info.get(CALIBRATION_INFO_KEY)
        if raw is None:
            return cls()
        if not isinstance(raw, dict) or not all(isinstance(raw.get(k), int | float) for k in ("scale", "shift")):
            raise ValueError(f"{CALIBRATION_INFO_KEY}: expected {{'scale': number, 'shift': number}}, got {raw!r}")
        return cls(scale=float(raw["scale"]), shift=float(raw["shift"]))

    @classmethod
    def fit(cls, confidences: list[float], correct: list[bool], *, l2: float = 1e-2,
            max_iter: int = 100) -> ConfidenceCalibration:
        """Logistic regression of ``correct`` on ``logit(confidence)``: Newton's method with a backtracking
        line search on the negative log-likelihood plus ``l2 * ((scale - 1)^2 + shift^2)``.

        Raises:
            ValueError: fewer than 10 words, all right or all wrong, or a fit that ranks wrong words
                above right ones (scale <= 0: the raw confidence carries no usable signal).
        """
        if len(confidences) != len(correct):
            raise ValueError(f"{len(confidences)} confidences for {len(correct)} labels")
        if len(correct) < 10 or all(correct) or not any(correct):
            raise ValueError(f"calibration needs >= 10 words with both right and wrong ones, got "
                             f"{len(correct)} words, {sum(correct)} right")
        x = np.array([_logit(c) for c in confidences])  # (N,)
        y = np.array(correct, dtype=np.float64)  # (N,)

        def loss(theta: np.ndarray) -> float:
            z = theta[0] * x + theta[1]
            # -log sigmoid(z) for right words, -log(1 - sigmoid(z)) for wrong ones, overflow-free
            nll = np.logaddexp(0.0, -z) * y + np.logaddexp(0.0, z) * (1.0 - y)
            return float(nll.sum() + l2 * ((theta[0] - 1.0) ** 2 + theta[1] ** 2))

        theta = np.array([1.0, 0.0])
        current = loss(theta)
        for _ in range(max_iter):
            p = 0.5 * (1.0 + np.tanh(0.5 * (theta[0] * x + theta[1])))  # sigmoid, overflow-free
            w = p * (1.0 - p)
            grad = np.array([np.dot(p - y, x) + 2 * l2 * (theta[0] - 1.0), np.sum(p - y) + 2 * l2 * theta[1]])
            hess = np.array([[np.dot(w, x * x) + 2 * l2, np.dot(w, x)], [np.dot(w, x), np.sum(w) + 2 * l2]])
            step = np.linalg.solve(hess, grad)
            t = 1.0
            while t > 1e-8 and loss(theta - t * step) > current - 1e-4 * t * float(np.dot(grad, step)):
                t *= 0.5
            theta = theta - t * step
            previous, current = current, loss(theta)
            if previous - current < 1e-10 * max(1.0, abs(current)):
                break
        a, b = float(theta[0]), float(theta[1])
        if a <= 0:
            raise ValueError(f"confidence does not rank right above wrong words here (fitted scale {a:.3g})")
        return cls(scale=a, shift=b)


@dataclass(slots=True)
class GreedyDecoder:
    """Best path: the most likely token per frame, repeats merged, blanks dropped."""

    tokenizer: Tokenizer
    frame_s: float = 0.04
    frames_decoded: int = 0
    trailing_silence_frames: int = 0
    _prev: int = BLANK_ID
    _tokens: list[_Token] = field(default_factory=list)

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
