"""Token vocabularies for the CTC head: characters, or SentencePiece subwords.

Id 0 is always the CTC blank. A tokenizer serialises to a JSON-able dict that travels inside the
checkpoint, so a model file is self-contained.
"""

from __future__ import annotations

import base64
import re
from typing import Any, Protocol

BLANK_ID = 0
_CHAR_SYMBOLS = tuple(" 'abcdefghijklmnopqrstuvwxyz")
_NORMALISE_RE = re.compile(r"[^a-z' ]+")


def normalise_text(text: str) -> str:
    """Lowercase, keep letters, apostrophes and single spaces (the references' alphabet)."""
    return " ".join(_NORMALISE_RE.sub(" ", text.lower()).split())


class Tokenizer(Protocol):
    """What the model, decoders and trainer need from a vocabulary."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def word_separator(self) -> int | None:
        """The token that ends a word by itself (a character vocabulary's space), or None where word
        boundaries live inside the pieces (SentencePiece's leading ``▁``)."""
        ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def piece(self, token_id: int) -> str:
        """Surface form of one token; a leading ``▁`` marks a word start (SentencePiece convention)."""
        ...

    def to_dict(self) -> dict[str, Any]: ...


class CharTokenizer:
    """Blank, space, apostrophe and a-z. Word starts are the tokens after a space."""

    def __init__(self) -> None:
        self.symbols = ("<blank>", *_CHAR_SYMBOLS)
        self._ids = {s: i for i, s in enumerate(self.symbols)}

    @property
    def vocab_size(self) -> int:
        return len(self.symbols)

    @property
    def word_separator(self) -> int | None:
        return self._ids[" "]

    def encode(self, text: str) -> list[int]:
        return [self._ids[ch] for ch in normalise_text(text)]

    def decode(self, ids: list[int]) -> str:
        return " ".join("".join(self.symbols[i] for i in ids if i != BLANK_ID).split())

    def piece(self, token_id: int) -> str:
        s = self.symbols[token_id]
        return "▁" if s == " " else s

    def to_dict(self) -> dict[str, Any]:
        return {"type": "char"}


class SentencePieceTokenizer:
    """A SentencePiece model (BPE or unigram) whose id 0 is reserved for the CTC blank.

    SentencePiece ids are shifted by one: piece ``p`` with sentencepiece id ``k`` is our token ``k + 1``.
    The model must be trained without ``<unk>``/``<s>``/``</s>`` at the front or with them disabled; the
    trainer in :mod:`streaming_model.train` does that.
    """

    def __init__(self, model_proto: bytes) -> None:
        import sentencepiece as spm

        self._proto = model_proto
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)

    @property
    def vocab_size(self) -> int:
        return int(self._sp.get_piece_size()) + 1

    @property
    def word_separator(self) -> int | None:
        return None  # a word ends where the next piece starts with "▁"

    def encode(self, text: str) -> list[int]:
        return [i + 1 for i in self._sp.encode(normalise_text(text))]

    def decode(self, ids: list[int]) -> str:
        return str(self._sp.decode([i - 1 for i in ids if i != BLANK_ID]))

    def piece(self, token_id: int) -> str:
        return str(self._sp.id_to_piece(token_id - 1))

    def to_dict(self) -> dict[str, Any]:
        return {"type": "sentencepiece", "model": base64.b64encode(self._proto).decode("ascii")}


def tokenizer_from_dict(data: dict[str, Any]) -> Tokenizer:
    kind = data.get("type")
    if kind == "char":
        return CharTokenizer()
    if kind == "sentencepiece":
        return SentencePieceTokenizer(base64.b64decode(data["model"]))
    raise ValueError(f"unknown tokenizer type {kind!r} (expected 'char' or 'sentencepiece')")
