"""CTC phrase scoring against posteriors: the forward algorithm equals torch's CTC loss, and confidences rank
the phrase the posteriors spell above near misses and other phrases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streaming_model.phrase_scoring import ctc_log_likelihood, phrase_confidences


@pytest.mark.parametrize("tokens", [[1], [1, 2, 3], [2, 2], [3, 1, 3, 3], []])
def test_forward_equals_torch_ctc_loss(tokens: list[int]) -> None:
    rng = np.random.default_rng(len(tokens))
    log_probs = torch.log_softmax(torch.from_numpy(rng.standard_normal((12, 5))), dim=-1)  # (T, V)
    expected = -torch.nn.functional.ctc_loss(log_probs[:, None, :], torch.tensor([tokens], dtype=torch.long),
                                             torch.tensor([12]), torch.tensor([len(tokens)]), blank=0,
                                             reduction="sum", zero_infinity=False)
    assert ctc_log_likelihood(log_probs.numpy(), tokens) == pytest.approx(float(expected), abs=1e-6)


def test_too_few_frames_is_impossible() -> None:
    log_probs = np.log(np.full((2, 4), 0.25))
    assert ctc_log_likelihood(log_probs, [1, 1, 1]) < -1e29  # a repeat needs a blank between: 5 frames


def spelled(tokens: list[int], vocab: int = 6, sharp: float = 0.9) -> np.ndarray:
    """Posteriors that spell ``tokens`` with a blank between each, confident at ``sharp``."""
    frames = []
    for token in tokens:
        for label in (token, 0):
            row = np.full(vocab, (1 - sharp) / (vocab - 1))
            row[label] = sharp
            frames.append(row)
    return np.log(np.array(frames))  # (T, V)


def test_confidences_rank_exact_over_near_miss_over_other() -> None:
    log_probs = spelled([1, 2, 3, 4, 5])
    exact, near, other, longer = phrase_confidences(log_probs, [[1, 2, 3, 4, 5], [1, 2, 3, 4, 1], [5, 4, 3],
                                                                [1, 2, 3, 4, 5, 5]])
    assert exact > 0.9
    assert 0.05 < near < 0.6
    assert other < near and longer < exact
    assert phrase_confidences(log_probs[:0], [[1]]) == [0.0]
