"""Scoring closed-set phrases (a speech grammar's sentences) against an utterance's CTC posteriors.

Dimension legend: T frames, V vocabulary, S extended label states (2 L + 1 for L tokens).

A phrase's score is its CTC log-likelihood ``log P(phrase | audio)`` (the forward algorithm, summing every
alignment, Graves et al. 2006 §4.1) compared with the best free path (the per-frame maximum, what greedy
decoding reads): ``confidence = min(1, exp((log P(phrase) - log P(best path)) / num_tokens))``, the
geometric-mean per-token likelihood ratio. A phrase the audio says exactly scores near 1; one wrong
letter of eleven costs about a factor of e^-1 overall; a different sentence scores near 0. Whole-utterance
semantics (SRGS): words the phrase lacks must be explained by the phrase's own tokens or blanks, so they
cost too.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ctc_log_likelihood", "phrase_confidences"]

BLANK_ID = 0
_NEG_INF = -1e30


def ctc_log_likelihood(log_probs: np.ndarray, tokens: list[int]) -> float:
    """``log P(tokens | log_probs)`` under CTC with blank 0.

    Args:
        log_probs: (T, V) per-frame log posteriors.
        tokens: the label sequence (no blanks).
    Returns:
        The log-likelihood; -inf-like (< -1e29) when the frames are too few for the labels.
    """
    num_frames = log_probs.shape[0]
    if num_frames == 0:
        return 0.0 if not tokens else _NEG_INF
    extended = np.full(2 * len(tokens) + 1, BLANK_ID, dtype=np.int64)  # (S,)
    extended[1::2] = tokens
    num_states = extended.shape[0]
    # A state may skip the blank before it when it is a label different from the label two states back.
    skip = np.zeros(num_states, dtype=bool)
    if num_states > 2:
        skip[2:] = (extended[2:] != BLANK_ID) & (extended[2:] != extended[:-2])
    alpha = np.full(num_states, _NEG_INF)  # (S,)
    alpha[0] = log_probs[0, extended[0]]
    if num_states > 1:
        alpha[1] = log_probs[0, extended[1]]
    for t in range(1, num_frames):
        stay = alpha
        step = np.concatenate(([_NEG_INF], alpha[:-1]))
        jump = np.where(skip, np.concatenate(([_NEG_INF, _NEG_INF], alpha[:-2])), _NEG_INF)
        alpha = np.logaddexp(np.logaddexp(stay, step), jump) + log_probs[t, extended]
    if num_states == 1:
        return float(alpha[0])
    return float(np.logaddexp(alpha[-1], alpha[-2]))


def phrase_confidences(log_probs: np.ndarray, phrases: list[list[int]]) -> list[float]:
    """Each phrase's confidence in [0, 1] against the utterance ``log_probs`` (T, V) (module docstring)."""
    if log_probs.shape[0] == 0:
        return [0.0 for _ in phrases]
    best_path = float(log_probs.max(axis=1).sum())
    out = []
    for tokens in phrases:
        if not tokens:
            out.append(0.0)
            continue
        ratio = (ctc_log_likelihood(log_probs, tokens) - best_path) / len(tokens)
        out.append(float(min(1.0, np.exp(max(ratio, -50.0)))))
    return out
