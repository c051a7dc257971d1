"""Out-of-vocabulary rate of a manifest against the training text vocabulary."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streaming_model.data.manifest import read_manifest
from streaming_model.data.text import TextSampler


@dataclass(frozen=True, slots=True)
class OovReport:
    """Token and type OOV rates, and the most frequent OOV words."""

    tokens: int
    oov_tokens: int
    types: int
    oov_types: int
    vocabulary_size: int
    top_oov: tuple[tuple[str, int], ...]

    def __str__(self) -> str:
        top = ", ".join(f"{w} ({c})" for w, c in self.top_oov)
        return (
            f"training vocabulary: {self.vocabulary_size} words\n"
            f"token OOV rate: {self.oov_tokens}/{self.tokens} = {100 * self.oov_tokens / max(self.tokens, 1):.2f}%\n"
            f"type OOV rate: {self.oov_types}/{self.types} = {100 * self.oov_types / max(self.types, 1):.2f}%\n"
            f"most frequent OOV words: {top}"
        )


def training_vocabulary(*, train_manifest: Path | None, samples: int, seed: int) -> set[str]:
    """Words of a training manifest, or of ``samples`` texts drawn from the train text generator."""
    if train_manifest is not None:
        return {w for u in read_manifest(train_manifest) for w in u.text.split()}
    sampler, rng = TextSampler("train"), np.random.default_rng(seed)
    return {w for _ in range(samples) for w in sampler.sample(rng)[0].split()}


def oov_report(manifest: Path, vocabulary: set[str], *, top: int = 15) -> OovReport:
    """OOV statistics of ``manifest``'s texts against ``vocabulary``."""
    counts = Counter(w for u in read_manifest(manifest) for w in u.text.split())
    oov = Counter({w: c for w, c in counts.items() if w not in vocabulary})
    return OovReport(
        tokens=sum(counts.values()),
        oov_tokens=sum(oov.values()),
        types=len(counts),
        oov_types=len(oov),
        vocabulary_size=len(vocabulary),
        top_oov=tuple(oov.most_common(top)),
    )
