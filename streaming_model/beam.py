"""Streaming CTC prefix beam search with hotword biasing and word n-gram shallow fusion.

Theory of operation. A hypothesis is a token prefix, held as a persistent linked node (:class:`_Prefix`:
parent, token, the frame of the token's first spike, its posterior there); its beam entry carries two
log probabilities, ``pb`` (all CTC paths of that prefix ending in blank so far) and ``pnb`` (ending in its
last token). Every frame, each prefix:

* stays the same prefix through a blank (``pb' = log(e^pb + e^pnb) + lp[blank]``) or a repeat of its last
  token (``pnb' = pnb + lp[last]``);
* grows by a token ``k`` (``pnb(l+k) += total(l) + lp[k]``, or ``pb(l) + lp[k]`` when ``k`` repeats the
  last token, since then a blank must separate them).

Prefixes reached twice merge (log-sum-exp; or max with ``merge="max"``, the Viterbi variant, whose beam 1
is exactly greedy decoding). Candidates are ranked by ``log(e^pb + e^pnb)`` plus the prefix's hotword
bonus (:mod:`streaming_model.context_graph`, carried per prefix) and its LM score (:mod:`streaming_model.ngram`,
added when a prefix completes a word: a ``▁`` piece starts the next one, or at finalize); the best
``beam_size`` survive. For speed, a frame whose blank posterior exceeds ``blank_skip`` only advances
``pb``/``pnb`` (no extensions), and only the ``token_top_k`` most likely tokens within ``token_prune`` nats
of the frame's best are tried; the extension scores are computed for all (prefix, token) pairs at once
with numpy and only the survivors of a score threshold become Python objects.

Dimension legend: T frames, V vocabulary, B live prefixes, K candidate tokens of a frame.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, replace

import numpy as np

from streaming_model.context_graph import ContextGraph, ContextState
from streaming_model.decoding import EMPTY_HYPOTHESIS, Hypothesis, _Token, words_from_tokens
from streaming_model.ngram import BOS, EOS, NgramLM
from streaming_model.tokenizer import BLANK_ID, Tokenizer

_NEG_INF = -math.inf


class _Prefix:
    """One token prefix: a node of a persistent list (shared tails cost nothing)."""

    __slots__ = (
        "ctx",
        "ctx_score",
        "frame",
        "history",
        "last_frame",
        "lm_score",
        "parent",
        "prob",
        "token",
        "word",
    )

    def __init__(self, parent: _Prefix | None, token: int, frame: int, prob: float, ctx: ContextState | None,
                 ctx_score: float, lm_score: float, history: tuple[str, ...], word: str) -> None:
        self.parent = parent
        self.token = token
        self.frame = frame  # first spike frame of this token (absolute)
        self.last_frame = frame  # last frame this token was the likelier emission (for word end times)
        self.prob = prob  # posterior of the token at its spike (max over its run)
        self.ctx = ctx
        self.ctx_score = ctx_score  # accumulated hotword bonus
        self.lm_score = lm_score  # accumulated weighted LM score + insertion bonuses of completed words
        self.history = history  # completed words, last order-1 (LM context)
        self.word = word  # the word being spelled

    @property
    def bonus(self) -> float:
        return self.ctx_score + self.lm_score

    def tokens(self) -> list[_Token]:
        """The prefix's tokens in order, each token's end clamped before the next token's start."""
        out: list[_Token] = []
        node: _Prefix | None = self
        next_frame = None
        while node is not None and node.parent is not None:
            last = node.last_frame if next_frame is None else min(node.last_frame, next_frame - 1)
            out.append(_Token(node.token, node.frame, max(last, node.frame), node.prob))
            next_frame = node.frame
            node = node.parent
        out.reverse()
        return out


@dataclass(frozen=True, slots=True)
class BeamConfig:
    """Search settings (log-probabilities are natural logs).

    Attributes:
        beam_size: prefixes kept per frame.
        token_top_k: most tokens tried per frame (None: ``beam_size``).
        token_prune: tokens more than this many nats below the frame's best token are not tried, nor
            new prefixes more than this below the best prefix.
        blank_skip: frames whose blank posterior exceeds this only advance existing prefixes.
        lm_weight: weight of the LM log probability (natural log) of each completed word.
        word_insertion_bonus: added per completed word when an LM is used.
        merge: ``"sum"`` (CTC prefix probability) or ``"max"`` (best path per prefix; beam 1 == greedy).
        stable_margin: prefixes within this many nats of the best take part in :attr:`BeamDecoder.stable_words`.
    """

    beam_size: int = 8
    token_top_k: int | None = None
    token_prune: float = 10.0
    blank_skip: float = 0.999
    lm_weight: float = 0.5
    word_insertion_bonus: float = 1.0
    merge: str = "sum"
    stable_margin: float = 5.0

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if self.merge not in ("sum", "max"):
            raise ValueError(f"merge: expected 'sum' or 'max', got {self.merge!r}")
        if not 0.0 < self.blank_skip <= 1.0:
            raise ValueError(f"blank_skip must be in (0, 1], got {self.blank_skip}")


class BeamDecoder:
    """A :class:`~streaming_model.decoding.StreamDecoder` running CTC prefix beam search.

    Args:
        tokenizer: the model's tokenizer (pieces, word starts).
        config: search settings.
        frame_s: seconds per encoder frame.
        context: hotword graph (tokenised with ``tokenizer``), or None.
        lm: word n-gram LM for shallow fusion, or None.
    """

    def __init__(self, tokenizer: Tokenizer, config: BeamConfig | None = None, *, frame_s: float = 0.04,
                 context: ContextGraph | None = None, lm: NgramLM | None = None) -> None:
        self.tokenizer = tokenizer
        self.config = config or BeamConfig()
        self.frame_s = frame_s
        self.context = context
        self.lm = lm
        self.frames_decoded = 0
        self.trailing_silence_frames = 0
        vocab = tokenizer.vocab_size
        pieces = [tokenizer.piece(i) if i != BLANK_ID else "" for i in range(vocab)]
        self._starts_word = [p.startswith("▁") for p in pieces]
        self._piece_text = [p.lstrip("▁") for p in pieces]
        self._top_k = min(self.config.token_top_k or self.config.beam_size, vocab - 1)
        self._log_blank_skip = math.log(self.config.blank_skip) if self.config.blank_skip < 1.0 else 0.0
        self._sum = self.config.merge == "sum"
        self._lm_history0: tuple[str, ...] = (BOS,) if lm is not None else ()
        self._silence_from = 0  # frame after the last emitted token (for trailing_silence_frames)
        self._hyp_cache: tuple[_Prefix, int, Hypothesis] | None = None
        self._reset()

    # ------------------------------------------------------------------------------------------ state

    def _reset(self) -> None:
        root_ctx = self.context.root if self.context is not None else None
        self._root = _Prefix(None, BLANK_ID, self.frames_decoded, 1.0, root_ctx, 0.0, 0.0, self._lm_history0, "")
        self._nodes: list[_Prefix] = [self._root]
        self._pb = np.zeros(1)  # (B,)
        self._pnb = np.full(1, _NEG_INF)  # (B,)
        self._last = np.zeros(1, dtype=np.int64)  # (B,) last token per prefix (blank for the root)
        self._hyp_cache = None

    def _scores(self) -> np.ndarray:
        total: np.ndarray = np.logaddexp(self._pb, self._pnb) if self._sum else np.maximum(self._pb, self._pnb)
        return total + np.fromiter((n.bonus for n in self._nodes), np.float64, len(self._nodes))  # (B,)

    def _best(self) -> _Prefix:
        if len(self._nodes) == 1:
            return self._nodes[0]
        return self._nodes[int(np.argmax(self._scores()))]

    # --------------------------------------------------------------------------------------- decoding

    def accept(self, log_probs: np.ndarray) -> None:
        """Consume (T, V) log-probabilities of the next T frames."""
        if log_probs.ndim != 2 or log_probs.shape[1] != len(self._starts_word):
            raise ValueError(f"log_probs: expected (T, {len(self._starts_word)}), got {log_probs.shape}")
        if log_probs.shape[0] == 0:
            return
        lp_all = np.asarray(log_probs, dtype=np.float64)
        k = self._top_k
        # Candidate tokens per frame, all frames at once: (T, K) ids, best first.
        nonblank = lp_all[:, 1:]
        if k < nonblank.shape[1]:
            cand = np.argpartition(nonblank, -k, axis=1)[:, -k:] + 1  # (T, K)
        else:
            cand = np.broadcast_to(np.arange(1, nonblank.shape[1] + 1), nonblank.shape)
        skip = lp_all[:, BLANK_ID] > self._log_blank_skip  # (T,)
        for t in range(lp_all.shape[0]):
            lp = lp_all[t]
            if skip[t]:
                self._advance(lp)
            else:
                self._extend(lp, cand[t], self.frames_decoded + t)
        self.frames_decoded += lp_all.shape[0]
        best = self._best()
        if best is not self._root:
            self._silence_from = max(self._silence_from, best.last_frame + 1)
        self.trailing_silence_frames = self.frames_decoded - self._silence_from

    def _advance(self, lp: np.ndarray) -> None:
        """A blank-dominated frame: prefixes only stay (blank, or a repeat of their last token)."""
        total = np.logaddexp(self._pb, self._pnb) if self._sum else np.maximum(self._pb, self._pnb)
        self._pb = total + lp[BLANK_ID]
        self._pnb = self._pnb + lp[self._last]

    def _extend(self, lp: np.ndarray, cand: np.ndarray, frame: int) -> None:
        cfg = self.config
        use_sum = self._sum
        pb, pnb, last, nodes = self._pb, self._pnb, self._last, self._nodes
        n_old = len(nodes)
        total = np.logaddexp(pb, pnb) if use_sum else np.maximum(pb, pnb)  # (B,)
        stay_pb = (total + lp[BLANK_ID]).tolist()
        stay_pnb = (pnb + lp[last]).tolist()
        cand_lp = lp[cand]  # (K,)
        keep = cand_lp >= cand_lp.max() - cfg.token_prune
        cand, cand_lp = cand[keep], cand_lp[keep]
        ext = total[:, None] + cand_lp[None, :]  # (B, K)
        same = last[:, None] == cand[None, :]  # (B, K)
        if same.any():
            ext = np.where(same, pb[:, None] + cand_lp[None, :], ext)

        # An extension that reproduces a live prefix (its parent is live too) merges into it.
        if n_old > 1:
            col_of = {tok: c for c, tok in enumerate(cand.tolist())}
            row_of = {id(n): i for i, n in enumerate(nodes)}
            for j, n in enumerate(nodes):
                r = row_of.get(id(n.parent))
                c = col_of.get(n.token) if r is not None else None
                if r is not None and c is not None:
                    stay_pnb[j] = _merge1(stay_pnb[j], float(ext[r, c]), use_sum)
                    ext[r, c] = _NEG_INF
        bonus = [n.bonus for n in nodes]
        scored = [(_merge1(stay_pb[i], stay_pnb[i], use_sum) + bonus[i], i) for i in range(n_old)]

        # New prefixes, best upper bound first; stop once none can reach the beam.
        max_step = self._max_step_bonus()
        upper = (ext + np.asarray(bonus)[:, None]).ravel() + max_step  # (B*K,)
        kth = heapq.nlargest(cfg.beam_size, (s for s, _ in scored))
        floor = max(kth[-1] if len(kth) >= cfg.beam_size else _NEG_INF,
                    max(kth[0], float(upper.max())) - max_step - cfg.token_prune)
        flat = np.nonzero(upper >= floor)[0]
        pending: list[tuple[int, int, float, tuple[float, ContextState | None, float, tuple[str, ...], str]]] = []
        if flat.size:
            flat = flat[np.argsort(-upper[flat], kind="stable")]
            heap = kth[: cfg.beam_size]
            heapq.heapify(heap)
            n_cand = cand.shape[0]
            cand_l = cand.tolist()
            ext_flat = ext.ravel()
            for f, u in zip(flat.tolist(), upper[flat].tolist(), strict=True):
                if len(heap) >= cfg.beam_size and u < heap[0]:
                    break
                r, c = divmod(f, n_cand)
                tok = cand_l[c]
                e = float(ext_flat[f])
                step = self._step(nodes[r], tok)
                score = e + bonus[r] + step[0] + step[2]
                scored.append((score, n_old + len(pending)))
                pending.append((r, tok, e, step))
                if len(heap) < cfg.beam_size:
                    heapq.heappush(heap, score)
                elif score > heap[0]:
                    heapq.heapreplace(heap, score)
        scored = [x for x in scored if x[0] > _NEG_INF] or scored[:1]
        if len(scored) > cfg.beam_size:
            scored.sort(key=lambda x: -x[0])
            del scored[cfg.beam_size:]

        kept_nodes: list[_Prefix] = []
        kept_pb: list[float] = []
        kept_pnb: list[float] = []
        for _, i in scored:
            if i >= n_old:
                r, tok, e, (ctx_gain, ctx, lm_gain, history, word) = pending[i - n_old]
                parent = nodes[r]
                node = _Prefix(parent, tok, frame, math.exp(lp[tok]), ctx, parent.ctx_score + ctx_gain,
                               parent.lm_score + lm_gain, history, word)
                kept_pb.append(_NEG_INF)
                kept_pnb.append(e)
            else:
                node = nodes[i]
                if node.parent is not None and lp[node.token] > lp[BLANK_ID] and stay_pnb[i] > stay_pb[i]:
                    # The token is still the likelier emission on this prefix's best continuation.
                    node.last_frame = frame
                    node.prob = max(node.prob, math.exp(lp[node.token]))
                kept_pb.append(stay_pb[i])
                kept_pnb.append(stay_pnb[i])
            kept_nodes.append(node)
        self._nodes = kept_nodes
        self._pb = np.asarray(kept_pb)
        self._pnb = np.asarray(kept_pnb)
        self._last = np.asarray([n.token for n in kept_nodes], dtype=np.int64)

    def _max_step_bonus(self) -> float:
        b = self.context.max_token_score if self.context is not None else 0.0
        if self.lm is not None:
            b += max(0.0, self.config.word_insertion_bonus)
        return b

    def _step(self, parent: _Prefix, tok: int) -> tuple[float, ContextState | None, float, tuple[str, ...], str]:
        """Bonus of appending ``tok``: (context gain, context state, LM gain, LM history, current word)."""
        ctx_gain, ctx = 0.0, parent.ctx
        if self.context is not None:
            assert ctx is not None
            ctx_gain, ctx = self.context.forward_one_step(ctx, tok)
        lm_gain, history, word = 0.0, parent.history, parent.word
        if self.lm is not None:
            if self._starts_word[tok]:
                if word:
                    lm_gain = self._word_score(history, word)
                    history = (*history, word)[-(self.lm.order - 1):] if self.lm.order > 1 else ()
                word = self._piece_text[tok]
            else:
                word = word + self._piece_text[tok]
        return ctx_gain, ctx, lm_gain, history, word

    def _word_score(self, history: tuple[str, ...], word: str) -> float:
        assert self.lm is not None
        return self.config.lm_weight * self.lm.score(history, word) + self.config.word_insertion_bonus

    def _final_bonus(self, node: _Prefix) -> float:
        """What finishing the utterance adds: unfinished hotword take-back, last word and ``</s>`` LM score."""
        extra = 0.0
        if self.context is not None and node.ctx is not None:
            extra += self.context.finalize(node.ctx)[0]
        if self.lm is not None and node is not self._root:
            history = node.history
            if node.word:
                extra += self._word_score(history, node.word)
                history = (*history, node.word)[-(self.lm.order - 1):] if self.lm.order > 1 else ()
            extra += self.config.lm_weight * self.lm.score(history, EOS)
        return extra

    # ------------------------------------------------------------------------------------- hypotheses

    def _hypothesis(self, node: _Prefix) -> Hypothesis:
        if node is self._root:
            return EMPTY_HYPOTHESIS
        cache = self._hyp_cache
        if cache is not None and cache[0] is node and cache[1] == node.last_frame:
            return cache[2]
        hyp = words_from_tokens(node.tokens(), self.tokenizer, self.frame_s)
        self._hyp_cache = (node, node.last_frame, hyp)
        return hyp

    def partial(self) -> Hypothesis:
        """The best prefix so far (ranked with its hotword and LM bonuses), with :attr:`stable_words`."""
        hyp = self._hypothesis(self._best())
        return replace(hyp, stable_words=self.stable_words) if hyp.words else hyp

    def nbest(self, n: int | None = None) -> list[tuple[float, Hypothesis]]:
        """The live prefixes, best first, with their ranking scores."""
        scores = self._scores()
        order = np.argsort(-scores)[: n or len(self._nodes)]
        return [(float(scores[i]), self._hypothesis_uncached(self._nodes[i])) for i in order]

    def _hypothesis_uncached(self, node: _Prefix) -> Hypothesis:
        return EMPTY_HYPOTHESIS if node is self._root else words_from_tokens(node.tokens(), self.tokenizer,
                                                                               self.frame_s)

    @property
    def stable_words(self) -> int:
        """Words at the start of the best hypothesis that every competitive prefix agrees on.

        Competitive: ranked within ``config.stable_margin`` nats of the best. Only words followed by
        another word count, since the last word may still be growing. These words rarely change later.
        """
        scores = self._scores()
        best_i = int(np.argmax(scores))
        rivals = [n for n, sc in zip(self._nodes, scores.tolist(), strict=True)
                  if sc >= scores[best_i] - self.config.stable_margin]
        texts = [self._words_of(self._nodes[best_i])] + [self._words_of(n) for n in rivals]
        shortest = min(len(t) for t in texts)
        stable = 0
        for i in range(shortest):
            w = texts[0][i]
            if any(t[i] != w for t in texts[1:]):
                break
            stable = i + 1
        return min(stable, max(len(texts[0]) - 1, 0))

    def _words_of(self, node: _Prefix) -> list[str]:
        pieces: list[str] = []
        n: _Prefix | None = node
        while n is not None and n.parent is not None:
            pieces.append(self.tokenizer.piece(n.token))
            n = n.parent
        return "".join(reversed(pieces)).replace("▁", " ").split()

    def finalize(self) -> Hypothesis:
        """Close the utterance: pick the best prefix with end-of-utterance scores, start the next one."""
        final = self._scores() + np.fromiter((self._final_bonus(n) for n in self._nodes), np.float64,
                                             len(self._nodes))
        best = self._nodes[int(np.argmax(final))]
        hyp = self._hypothesis(best)
        if best is not self._root:
            self._silence_from = max(self._silence_from, best.last_frame + 1)
        self._reset()
        return hyp


def _merge1(a: float, b: float, use_sum: bool) -> float:
    if not use_sum:
        return a if a > b else b
    if a == _NEG_INF:
        return b
    if b == _NEG_INF:
        return a
    m = a if a > b else b
    return m + math.log1p(math.exp(-abs(a - b)))
