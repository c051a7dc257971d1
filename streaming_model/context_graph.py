"""Hotword biasing: an Aho-Corasick trie over token ids, scored per matched token (WeNet/icefall style).

Theory of operation. Every phrase is tokenised with the stream's tokenizer and inserted into a trie; a
node's ``node_score`` is the sum of the per-token boosts along its path from the root, the bonus a
hypothesis holds *tentatively* while it is part-way through a phrase. A decoder carries one
:class:`ContextState` (a trie node) per hypothesis and calls :meth:`ContextGraph.forward_one_step` for
every token it appends:

* the token continues the match (a goto arc): the score is that token's boost;
* otherwise the state follows failure arcs to the longest suffix that is still a phrase prefix (plain
  Aho-Corasick), and the score is ``new.node_score - old.node_score + old.matched_score``: the tentative
  bonus of the abandoned partial match is taken back, except the part already earned by a phrase that
  was completed on the way (``matched_score``: the best completed phrase on the node's path, found
  through output arcs too, so "premium" inside "premium plus" and "plan" inside "data plan" count);

:meth:`ContextGraph.finalize` takes back what is still tentative when the utterance ends. The sum of
all scores along a token sequence is therefore, once finalised, the boosts of the phrases it contains.

Whole words. With a vocabulary whose word separator is a token of its own (characters: the space), each
phrase is inserted with that separator after it, so a phrase is only earned when its last word ends:
"crossing" followed by "cast" in "briarwood crossingcast" earns nothing, and the separator after a phrase
is boosted like its other tokens, which pulls the beam towards ending the word there (measured on the dev
hotword subset: the weak model often ran a recognised name into the next word). The end of the utterance
counts as a separator (:meth:`ContextGraph.finalize`). Phrases are not required to *start* at a word
boundary: the first word of a phrase may still match the tail of a longer word.

Scores are natural-log units added to the hypothesis' acoustic log-probability for ranking.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from streaming_model.tokenizer import Tokenizer

DEFAULT_CONTEXT_SCORE = 2.0  # per token; WeNet uses 6.0 on BPE-size tokens, chars need less


@dataclass(eq=False, slots=True)
class ContextState:
    """One trie node (the state a hypothesis is in)."""

    token: int  # -1 for the root
    token_score: float  # boost of the arc into this node
    node_score: float  # sum of boosts from the root: the tentative bonus held here
    level: int
    phrase: str = ""  # set on nodes that end a phrase
    is_end: bool = False
    matched_score: float = 0.0  # bonus earned by completed phrases on this path (kept on failure)
    fail: ContextState | None = None
    output: ContextState | None = None  # nearest phrase-ending node on the failure chain
    next: dict[int, ContextState] = field(default_factory=dict)


class ContextGraph:
    """Aho-Corasick automaton over token ids with per-phrase, per-token boosts.

    Args:
        phrases: ``(token_ids, boost_per_token)`` pairs; ``boost_per_token`` None uses ``context_score``.
        context_score: the default boost per matched token.
        word_separator: the token that ends a word (a character vocabulary's space), appended to every
            phrase so that only whole final words are earned; None where there is none (SentencePiece).
    """

    def __init__(self, phrases: Iterable[tuple[Sequence[int], float | None]], *,
                 context_score: float = DEFAULT_CONTEXT_SCORE, word_separator: int | None = None) -> None:
        self.context_score = context_score
        self.word_separator = word_separator
        self.root = ContextState(token=-1, token_score=0.0, node_score=0.0, level=0)
        self.root.fail = self.root
        self.num_phrases = 0
        self.max_token_score = 0.0
        self._cache: dict[tuple[int, int], tuple[float, ContextState]] = {}
        for tokens, boost in phrases:
            ids = list(tokens)
            if ids and word_separator is not None and ids[-1] != word_separator:
                ids.append(word_separator)
            self._insert(ids, context_score if boost is None else float(boost))
        self._link()

    @classmethod
    def from_text(cls, phrases: Iterable[tuple[str, float | None]], tokenizer: Tokenizer, *,
                  context_score: float = DEFAULT_CONTEXT_SCORE) -> ContextGraph:
        """Tokenise ``(phrase, boost)`` pairs with ``tokenizer``; phrases that tokenise to nothing are skipped.

        Phrases end with the tokenizer's word separator when it has one (whole final words only).
        """
        return cls(((tokenizer.encode(text), boost) for text, boost in phrases), context_score=context_score,
                   word_separator=tokenizer.word_separator)

    def _insert(self, tokens: list[int], boost: float) -> None:
        if not tokens:
            return
        if boost <= 0:
            raise ValueError(f"hotword boost must be positive, got {boost}")
        node = self.root
        for tok in tokens:
            child = node.next.get(tok)
            if child is None:
                child = ContextState(token=tok, token_score=boost, node_score=node.node_score + boost,
                                     level=node.level + 1)
                node.next[tok] = child
            elif boost > child.token_score:
                # Two phrases share this prefix with different boosts: the larger one wins, and every
                # node below must keep node_score == parent.node_score + token_score.
                self._raise_boost(child, node.node_score, boost)
            node = child
        node.is_end = True
        node.phrase = ",".join(map(str, tokens))
        self.num_phrases += 1
        self.max_token_score = max(self.max_token_score, boost)

    @staticmethod
    def _raise_boost(node: ContextState, parent_score: float, boost: float) -> None:
        node.token_score = boost
        stack = [(node, parent_score)]
        while stack:
            n, ps = stack.pop()
            n.node_score = ps + n.token_score
            stack.extend((c, n.node_score) for c in n.next.values())

    def _link(self) -> None:
        """Breadth-first: failure arcs, output arcs and the earned (matched) score of every node."""
        queue: deque[ContextState] = deque()
        for child in self.root.next.values():
            child.fail = self.root
            queue.append(child)
        while queue:
            node = queue.popleft()
            assert node.fail is not None
            fail_end = node.fail if node.fail.is_end else node.fail.output
            node.output = fail_end
            # Earned on this path: this phrase if it ends here, else what the parent earned, and any
            # phrase ending here as a suffix (output arcs).
            parent_earned = node.matched_score  # set below by the parent before queueing
            node.matched_score = max(node.node_score if node.is_end else 0.0, parent_earned,
                                     fail_end.node_score if fail_end is not None else 0.0)
            for tok, child in node.next.items():
                f = node.fail
                while tok not in f.next and f is not self.root:
                    assert f.fail is not None
                    f = f.fail
                child.fail = f.next[tok] if tok in f.next else self.root
                child.matched_score = node.matched_score
                queue.append(child)

    def forward_one_step(self, state: ContextState, token: int) -> tuple[float, ContextState]:
        """Score of appending ``token`` to a hypothesis in ``state``, and the state after it."""
        key = (id(state), token)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        nxt = state.next.get(token)
        if nxt is not None:
            result = (nxt.token_score, nxt)
        else:
            node = state.fail
            assert node is not None
            while token not in node.next and node is not self.root:
                assert node.fail is not None
                node = node.fail
            node = node.next.get(token, self.root)
            result = (node.node_score - state.node_score + state.matched_score, node)
        self._cache[key] = result  # nodes live as long as the graph, so their ids are stable keys
        return result

    def finalize(self, state: ContextState) -> tuple[float, ContextState]:
        """End the utterance: it ends the last word too (the separator step where there is one), then
        the tentative bonus of an unfinished match is taken back; returns (score, root)."""
        score = 0.0
        if self.word_separator is not None:
            score, state = self.forward_one_step(state, self.word_separator)
        return score + state.matched_score - state.node_score, self.root
