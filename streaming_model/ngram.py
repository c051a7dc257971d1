"""A word n-gram language model (interpolated modified Kneser-Ney) for shallow fusion in beam search.

Training counts n-grams with numpy (each n-gram packed into one int64: word ids in base ``|V|``), so a
million sentences take seconds. The highest order uses raw counts, lower orders continuation counts
(the number of distinct left contexts; n-grams that begin with ``<s>`` keep raw counts, as in KenLM).
Every order is discounted with three discounts (Chen & Goodman's modified Kneser-Ney) and interpolated
with the order below; unigrams are interpolated with the uniform distribution, which gives ``<unk>``
its probability. The result is stored in backoff form: for every seen n-gram its interpolated log
probability and, for every n-gram that is a context, its backoff weight (the interpolation weight), so
it exports to ARPA exactly and ``P(w | h)`` sums to one over the vocabulary for every context.

Log probabilities inside the program are natural logs (the decoder's units); ARPA files hold log10.
The vocabulary is every training word plus ``<unk>`` and ``</s>``; ``<s>`` is a context only.

Command line::

    python -m streaming_model.ngram train --text FILE --out lm.npz [--order 3]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from streaming_model.tokenizer import normalise_text

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
_LN10 = math.log(10.0)
_ARPA_MIN_LOG10 = -99.0


def _discounts(counts: np.ndarray) -> tuple[float, float, float]:
    """Modified Kneser-Ney discounts D1, D2, D3+ from count-of-counts (Chen & Goodman 1998, eq. 26)."""
    n = [int(np.count_nonzero(counts == k)) for k in (1, 2, 3, 4)]
    if min(n) == 0:  # tiny corpora: fall back to a plain absolute discount
        return 0.5, min(1.0, 2 * 0.5), min(1.5, 3 * 0.5)
    y = n[0] / (n[0] + 2 * n[1])
    d = (1 - 2 * y * n[1] / n[0], 2 - 3 * y * n[2] / n[1], 3 - 4 * y * n[3] / n[2])
    return tuple(float(np.clip(x, 0.05, k)) for k, x in enumerate(d, start=1))  # type: ignore[return-value]


class NgramLM:
    """A backoff word n-gram model.

    ``keys[n]`` are the sorted packed ids of the order-(n+1) n-grams, ``logp[n]`` their natural-log
    probabilities and ``bow[n]`` their natural-log backoff weights (0 when the n-gram is never a context).
    """

    def __init__(self, vocab: Sequence[str], keys: list[np.ndarray], logp: list[np.ndarray],
                 bow: list[np.ndarray]) -> None:
        if not (len(keys) == len(logp) == len(bow) >= 1):
            raise ValueError("keys, logp and bow need one array per order")
        self.vocab = list(vocab)
        self.order = len(keys)
        self.ids = {w: i for i, w in enumerate(self.vocab)}
        for special in (BOS, EOS, UNK):
            if special not in self.ids:
                raise ValueError(f"vocabulary lacks {special}")
        self.base = len(self.vocab)
        if self.base ** self.order >= 2 ** 63:
            raise ValueError(f"{self.base} words of order {self.order} do not pack into int64")
        self.keys = [np.asarray(k, dtype=np.int64) for k in keys]
        self.logp = [np.asarray(p, dtype=np.float64) for p in logp]
        self.bow = [np.asarray(b, dtype=np.float64) for b in bow]
        self.unk_id = self.ids[UNK]
        self._cache: dict[tuple[tuple[str, ...], str], float] = {}

    # ----------------------------------------------------------------------------------------- scoring

    def _find(self, n: int, key: int) -> int:
        """Index of packed n-gram ``key`` in order ``n`` (0-based), or -1."""
        k = self.keys[n]
        i = int(np.searchsorted(k, key))
        return i if i < k.shape[0] and int(k[i]) == key else -1

    def _pack(self, ids: Sequence[int]) -> int:
        key = 0
        for i in ids:
            key = key * self.base + i
        return key

    def score(self, context: Sequence[str], word: str) -> float:
        """Natural-log ``P(word | context)``; unknown words map to ``<unk>``; ``context`` may start with ``<s>``."""
        ctx = tuple(context[-(self.order - 1):]) if self.order > 1 else ()
        cache_key = (ctx, word)
        hit = self._cache.get(cache_key)
        if hit is not None:
            return hit
        ids = [self.ids.get(w, self.unk_id) for w in (*ctx, word)]
        backoff = 0.0
        result = None
        for start in range(len(ids) - 1):
            h, n = ids[start:-1], len(ids) - start - 1
            i = self._find(n, self._pack(ids[start:]))
            if i >= 0:
                result = backoff + self.logp[n][i]
                break
            j = self._find(n - 1, self._pack(h))
            if j >= 0:
                backoff += self.bow[n - 1][j]
        if result is None:
            i = self._find(0, ids[-1])
            result = backoff + float(self.logp[0][i if i >= 0 else self._find(0, self.unk_id)])
        result = float(result)
        if len(self._cache) > 1_000_000:
            self._cache.clear()
        self._cache[cache_key] = result
        return result

    def sentence_logprob(self, words: Sequence[str]) -> float:
        """Natural-log probability of a whole sentence, ``</s>`` included."""
        hist = [BOS]
        total = 0.0
        for w in (*words, EOS):
            total += self.score(hist, w)
            hist.append(w)
        return total

    # ---------------------------------------------------------------------------------------- training

    @classmethod
    def train(cls, sentences: Iterable[str], *, order: int = 3, normalise: bool = True) -> NgramLM:
        """Estimate an interpolated modified Kneser-Ney model from sentences (one utterance each)."""
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        ids: dict[str, int] = {BOS: 0, EOS: 1, UNK: 2}
        seq: list[int] = []
        sent: list[int] = []
        n_sent = 0
        for line in sentences:
            words = (normalise_text(line) if normalise else line).split()
            if not words:
                continue
            toks = [0]
            for w in words:
                i = ids.get(w)
                if i is None:
                    i = ids[w] = len(ids)
                toks.append(i)
            toks.append(1)
            seq.extend(toks)
            sent.extend([n_sent] * len(toks))
            n_sent += 1
        if not n_sent:
            raise ValueError("no training text")
        vocab = list(ids)
        base = len(vocab)
        if base ** order >= 2 ** 63:
            raise ValueError(f"{base} words of order {order} do not pack into int64")
        seq_a = np.asarray(seq, dtype=np.int64)
        sent_a = np.asarray(sent, dtype=np.int64)

        # Raw counts of every order (windows that stay inside one sentence).
        raw: list[tuple[np.ndarray, np.ndarray]] = []
        for n in range(1, order + 1):
            m = seq_a.shape[0] - n + 1
            valid = sent_a[:m] == sent_a[n - 1: n - 1 + m]
            packed = np.zeros(m, dtype=np.int64)
            for pos in range(n):
                packed = packed * base + seq_a[pos: pos + m]
            raw.append(np.unique(packed[valid], return_counts=True))

        # Counts used for estimation: raw at the top order, continuation counts below.
        keys: list[np.ndarray] = [np.empty(0, np.int64)] * order
        counts: list[np.ndarray] = [np.empty(0, np.int64)] * order
        keys[-1], counts[-1] = raw[-1]
        for n in range(order - 1, 0, -1):  # n = number of words
            higher = raw[n][0]  # distinct (n+1)-grams
            suffix = higher % base ** n
            cont_keys, cont_counts = np.unique(suffix, return_counts=True)
            rk, rc = raw[n - 1]
            starts_bos = (rk // base ** (n - 1)) == 0
            all_keys = np.concatenate([cont_keys, rk[starts_bos]])
            all_counts = np.concatenate([cont_counts, rc[starts_bos]])
            order_idx = np.argsort(all_keys, kind="stable")
            keys[n - 1], counts[n - 1] = all_keys[order_idx], all_counts[order_idx]
        # <s> is a unigram context only: give it a zero count so it gets no probability mass.
        if keys[0].shape[0] == 0 or keys[0][0] != 0:
            keys[0] = np.concatenate([[0], keys[0]]).astype(np.int64)
            counts[0] = np.concatenate([[0], counts[0]]).astype(np.int64)
        counts[0] = np.where(keys[0] == 0, 0, counts[0])
        # Every vocabulary word needs a unigram entry (all occur, but <unk> does not).
        missing = np.setdiff1d(np.arange(base, dtype=np.int64), keys[0])
        if missing.size:
            k0 = np.concatenate([keys[0], missing])
            c0 = np.concatenate([counts[0], np.zeros(missing.size, np.int64)])
            o = np.argsort(k0)
            keys[0], counts[0] = k0[o], c0[o]

        logp: list[np.ndarray] = []
        bow: list[np.ndarray] = [np.zeros(k.shape[0]) for k in keys]
        prob_lower: np.ndarray | None = None
        for n in range(order):  # n + 1 words
            grams, c = keys[n], counts[n].astype(np.float64)
            d1, d2, d3 = _discounts(counts[n][counts[n] > 0])
            disc = np.where(c == 0, 0.0, np.where(c == 1, d1, np.where(c == 2, d2, d3)))
            disc = np.minimum(disc, c)
            hist = grams // base  # packed context (n words); for unigrams all share context 0
            if n == 0:
                hist = np.zeros_like(grams)
            uniq_h, inv = np.unique(hist, return_inverse=True)
            c_h = np.bincount(inv, weights=c)
            mass_h = np.bincount(inv, weights=disc)  # D1 N1 + D2 N2 + D3 N3+ per context
            gamma = np.where(c_h > 0, mass_h / np.maximum(c_h, 1e-300), 1.0)
            if n == 0:
                real = np.ones(grams.shape[0], dtype=bool)
                real[grams == 0] = False  # <s>
                lower = np.where(real, 1.0 / (base - 1), 0.0)
            else:
                assert prob_lower is not None
                lower_idx = np.searchsorted(keys[n - 1], grams % base ** n)
                assert np.array_equal(keys[n - 1][lower_idx], grams % base ** n), "lower order lacks a suffix"
                lower = prob_lower[lower_idx]
            with np.errstate(divide="ignore"):
                p = (c - disc) / np.maximum(c_h[inv], 1e-300) + gamma[inv] * lower
                lp = np.where(p > 0, np.log(np.maximum(p, 1e-300)), -np.inf)
            logp.append(lp)
            prob_lower = p
            if n > 0:
                ctx_idx = np.searchsorted(keys[n - 1], uniq_h)
                assert np.array_equal(keys[n - 1][ctx_idx], uniq_h), "lower order lacks a context"
                bow[n - 1][ctx_idx] = np.log(gamma)
        return cls(vocab, keys, logp, bow)

    # ------------------------------------------------------------------------------------------ storage

    def save(self, path: str | Path) -> None:
        """Write a compact ``.npz`` (float32 log probabilities)."""
        arrays: dict[str, np.ndarray] = {"vocab": np.frombuffer("\n".join(self.vocab).encode(), np.uint8)}
        for n in range(self.order):
            arrays[f"keys{n}"] = self.keys[n]
            arrays[f"logp{n}"] = self.logp[n].astype(np.float32)
            arrays[f"bow{n}"] = self.bow[n].astype(np.float32)
        with open(path, "wb") as f:
            np.savez_compressed(f, **arrays)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: str | Path) -> NgramLM:
        """Read a model written by :meth:`save`, or an ARPA file (by its ``.arpa`` suffix)."""
        if str(path).endswith(".arpa"):
            return cls.from_arpa(Path(path).read_text(encoding="utf-8"))
        with np.load(path) as z:
            vocab = bytes(z["vocab"]).decode().split("\n")
            order = sum(1 for name in z.files if name.startswith("keys"))
            return cls(vocab, [z[f"keys{n}"] for n in range(order)], [z[f"logp{n}"] for n in range(order)],
                       [z[f"bow{n}"] for n in range(order)])

    def _unpack(self, key: int, n: int) -> list[str]:
        words = []
        for _ in range(n):
            key, i = divmod(key, self.base)
            words.append(self.vocab[i])
        return words[::-1]

    def to_arpa(self) -> str:
        """The model as ARPA text (log10 probabilities and backoff weights)."""
        out = ["", "\\data\\"]
        out += [f"ngram {n + 1}={self.keys[n].shape[0]}" for n in range(self.order)]
        for n in range(self.order):
            out += ["", f"\\{n + 1}-grams:"]
            for key, lp, bw in zip(self.keys[n].tolist(), self.logp[n].tolist(), self.bow[n].tolist(),
                                   strict=True):
                l10 = lp / _LN10 if lp > -math.inf else _ARPA_MIN_LOG10
                line = f"{l10:.7f}\t{' '.join(self._unpack(key, n + 1))}"
                if n < self.order - 1 and bw != 0.0:
                    line += f"\t{bw / _LN10:.7f}"
                out.append(line)
        out += ["", "\\end\\", ""]
        return "\n".join(out)

    @classmethod
    def from_arpa(cls, text: str) -> NgramLM:
        """Parse ARPA text; words missing from the unigram section are rejected."""
        sections: list[list[tuple[float, list[str], float]]] = []
        current: list[tuple[float, list[str], float]] | None = None
        for raw_line in text.splitlines():
            line = raw_line.strip()
            if not line or line.startswith("ngram ") or line == "\\data\\":
                continue
            if line == "\\end\\":
                break
            if line.startswith("\\") and line.endswith("-grams:"):
                current = []
                sections.append(current)
                continue
            if current is None:
                raise ValueError(f"ARPA: entry before any n-gram section: {line!r}")
            fields = line.split()
            n = len(sections)
            if len(fields) not in (n + 1, n + 2):
                raise ValueError(f"ARPA: expected {n} words in {line!r}")
            bw = float(fields[n + 1]) * _LN10 if len(fields) == n + 2 else 0.0
            lp = float(fields[0])
            current.append((-math.inf if lp <= _ARPA_MIN_LOG10 else lp * _LN10, fields[1: n + 1], bw))
        if not sections:
            raise ValueError("ARPA: no n-gram sections")
        vocab = [words[0] for _, words, _ in sections[0]]
        for special in (BOS, EOS, UNK):
            if special not in vocab:
                vocab.append(special)
        ids = {w: i for i, w in enumerate(vocab)}
        base = len(vocab)
        keys, logps, bows = [], [], []
        for n, entries in enumerate(sections):
            packed = []
            for _, words, _ in entries:
                key = 0
                for w in words:
                    if w not in ids:
                        raise ValueError(f"ARPA: {w!r} in a {n + 1}-gram but not a unigram")
                    key = key * base + ids[w]
                packed.append(key)
            k = np.asarray(packed, dtype=np.int64)
            o = np.argsort(k)
            keys.append(k[o])
            logps.append(np.asarray([e[0] for e in entries])[o])
            bows.append(np.asarray([e[2] for e in entries])[o])
        if len(keys[0]) < base:  # specials the file lacked: <unk> with the ARPA floor, i.e. never
            extra = np.asarray([ids[w] for w in vocab[len(keys[0]):]], dtype=np.int64)
            k0 = np.concatenate([keys[0], extra])
            o = np.argsort(k0)
            keys[0] = k0[o]
            logps[0] = np.concatenate([logps[0], np.full(extra.size, -math.inf)])[o]
            bows[0] = np.concatenate([bows[0], np.zeros(extra.size)])[o]
        return cls(vocab, keys, logps, bows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streaming_model.ngram", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="estimate a model from a text file (one sentence a line)")
    train.add_argument("--text", required=True, help="training text (never the dev texts)")
    train.add_argument("--out", required=True, help="output .npz (or .arpa for ARPA text)")
    train.add_argument("--order", type=int, default=3)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    with open(args.text, encoding="utf-8") as f:
        lm = NgramLM.train(f, order=args.order)
    if args.out.endswith(".arpa"):
        Path(args.out).write_text(lm.to_arpa(), encoding="utf-8")
    else:
        lm.save(args.out)
    sizes = ", ".join(f"{n + 1}-grams {k.shape[0]}" for n, k in enumerate(lm.keys))
    print(f"{args.out}: {len(lm.vocab)} words, {sizes}, {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
