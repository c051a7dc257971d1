"""Finals from a second pass: Whisper's own decoder over the encoder states of an utterance (issue 8 item 3).

At each endpoint the utterance's Whisper log-mels (or encoder states the caller already has) go through
Whisper tiny.en's decoder (ctranslate2, weights from the pinned package, see
:mod:`streaming_model.pretrained.whisper`), while partials keep coming from the CTC head, as FunASR's 2pass
mode and WeNet's U2 rescoring do. The decoder's text is then brought to the product's form
(:func:`normalise_final`) and aligned to the utterance's CTC posteriors (:func:`align_words`), so a final
still carries words, timings and confidences.

Theory of operation (measured with ``python -m gateway.second_pass_eval``, results below):

* Whisper was trained on 30 s windows. States of an un-padded utterance make its decoder repeat the text
  until ``max_length``; the full 30 s window fixes that but costs ~0.6 s of encoder per final on one core.
  A short silence pad (``pad_s``) plus timestamp mode lets the decoder place the end of speech and emit
  the end-of-text token; the guards below catch what still loops.
* ``max_length`` follows the utterance's duration (``max_tokens_per_s``), so a loop costs a bounded time.
* Guards, applied to the generated tokens: in timestamp mode, segments starting at or after the end of
  speech are dropped (the decoder hallucinating over the pad), and so is every segment from the first one
  that repeats an earlier segment's text; then a token loop at the end (a block repeated to the last token
  when ``max_length`` was reached, or repeated three times before the end-of-text token) is cut back to
  its first copy.
* Hotwords are a previous-text prompt (``<|startofprev|>`` + the phrases before
  ``<|startoftranscript|>``), as faster-whisper's ``hotwords`` and ``initial_prompt`` do.

Measured on the first 150 utterances of ``data/dev/manifest.jsonl`` (held-out synthetic voices, about half
through telephone channels), tiny.en int8, greedy, one thread, on the shared 2-core machine (load ~5, so
latencies are pessimistic and noisy). WER of finals, normalised as the product scores:

=======================================  =====  =====  =========
setting                                  WER    clean  telephone
=======================================  =====  =====  =========
no pad, no timestamps, no guard          93.3%  80.3%  116.4%
no pad, no timestamps, guard             61.3%  53.6%  75.1%
no pad, timestamps, guard                67.7%  60.8%  79.9%
1 s pad, timestamps, guard               54.0%  45.0%  70.2%
3 s pad, timestamps, no guard            59.7%  48.7%  79.3%
3 s pad, timestamps, first segment only  57.1%  49.2%  71.3%
3 s pad, timestamps, guard (default)     53.5%  43.2%  71.9%
3 s pad, no timestamps, guard            55.0%  45.7%  71.6%
3 s pad, guard, no_repeat_ngram_size=4   55.7%  46.3%  72.6%
3 s pad, guard, beam 4                   55.4%  44.9%  74.1%
3 s pad, guard, float32                  53.5%  43.8%  70.8%
3 s pad, guard, PyTorch fp32 encoder     54.3%  44.7%  71.4%
6 s pad, timestamps, guard               52.6%  43.5%  68.9%
30 s pad, no timestamps, no guard        54.9%  46.0%  70.8%
=======================================  =====  =====  =========

Latency per final after the endpoint (encoder + decoder, one thread, first 60 of those utterances, other
jobs loading the machine): ms at p50 / p95.

=======================================  ==========  =========  =========  =====
setting                                  encoder     decoder    total      WER
=======================================  ==========  =========  =========  =====
3 s pad, timestamps, guard (default)     97          187 / 541  305 / 680  53.2%
no pad, no timestamps, guard             61          238 / 564  308 / 631  58.2%
6 s pad, timestamps, guard               136         181 / 418  321 / 668  50.3%
30 s pad, no timestamps, no guard        1074        217 / 464  1281/1996  49.5%
3 s pad, guard, float32                  214         569 / 1169 772 / 1410 55.8%
=======================================  ==========  =========  =========  =====

Hotwords (``dev/manifests/dev_hotwords.jsonl``, 150 utterances; each utterance's list is its spoken
phrases plus random others from ``dev/hotwords.txt``, 20 in all: the prompt holds about 40 phrases):
recall of spoken phrases 5.3% without the prompt, 24.0% with it, false insertions 0 and 0, WER 79.8% ->
75.6%; on the plain dev set (no phrase spoken) the same prompt moved WER 53.5% -> 54.5% with 1 false
insertion. Capitalised phrases: recall 23.3%, hotword-set WER 72.8%, but dev WER 56.4%. Gated (the
default, ``hotword_gate``): recall 24.0%, hotword-set WER 74.8%, dev WER 53.5% (no loss), 1 false insertion,
at the price of a second decoder run whenever the prompted final holds no hotword: on the plain dev set
the total latency went from 334 / 679 ms (p50 / p95, no list) to 640 / 1060 ms with a 20-phrase list.

Dimension legend: T mel frames (10 ms), S encoder frames (20 ms), D width, F CTC frames, V CTC vocabulary,
L extended (blank-interleaved) label states.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import torch

from streaming_model.features import whisper_features
from streaming_model.pretrained.whisper import whisper_model_dir
from streaming_model.textnorm import normalise_for_scoring
from streaming_model.tokenizer import BLANK_ID, CharTokenizer, normalise_text

if TYPE_CHECKING:
    from streaming_model.pretrained.whisper import WhisperEncoder

__all__ = [
    "AlignedWord",
    "SecondPassOptions",
    "SecondPassResult",
    "WhisperSecondPass",
    "WhisperTokenizer",
    "align_words",
    "ctc_forced_align",
    "normalise_final",
    "repetition_cut",
]

WINDOW_S: Final = 30.0  # Whisper's training window
# Encoder inputs are padded (with silence, after pad_s) up to a whole number of these: ctranslate2's oneDNN
# keeps a primitive per input shape (up to 1024), and an utterance of every length made the model process
# grow by ~350 MB over 400 second passes (a soak: +30% in 3 minutes); in whole seconds it stays flat at
# ~60 MB, for ~7% more encoder time on average.
ENCODER_BUCKET_S: Final = 1.0
MEL_FRAME_S: Final = 0.01
TIMESTAMP_STEP_S: Final = 0.02
MAX_DECODER_POSITIONS: Final = 448
# Padding value of Whisper's log-mels for silence: the floor, 8 below the (fixed) ceiling, scaled.
_CFG = whisper_features()
SILENCE_MEL: Final = (_CFG.log_ceiling - 8.0 + 4.0) / 4.0


# ---------------------------------------------------------------------------------------------- tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of the 256 byte values to printable characters (BPE works on these)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


# GPT-2's pre-tokeniser with ``re`` instead of ``regex``: [^\W\d_] stands for \p{L} and \d for \p{N}.
_PRETOKENIZE_RE: Final = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+")


class WhisperTokenizer:
    """Whisper's byte-level BPE (GPT-2's), read from the model folder's ``vocabulary.txt`` and
    ``tokenizer.json``: text to ids for prompts, ids to text for results."""

    def __init__(self, model_dir: Path) -> None:
        self.tokens = (model_dir / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
        if self.tokens and self.tokens[-1] == "":
            self.tokens.pop()
        self._ids = {t: i for i, t in enumerate(self.tokens)}
        merges = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))["model"]["merges"]
        pairs = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges]
        self._ranks: dict[tuple[str, ...], int] = {p: r for r, p in enumerate(pairs)}
        self._byte_chars = _bytes_to_unicode()
        self._char_bytes = {c: b for b, c in self._byte_chars.items()}
        self.eot = self.token_id("<|endoftext|>")
        self.sot = self.token_id("<|startoftranscript|>")
        self.sot_prev = self.token_id("<|startofprev|>")
        self.no_timestamps = self.token_id("<|notimestamps|>")
        self.timestamp_begin = self.token_id("<|0.00|>")

    def token_id(self, token: str) -> int:
        """Id of a vocabulary entry (a special token such as ``<|startoftranscript|>``, or a BPE piece)."""
        if token not in self._ids:
            raise KeyError(f"{token!r} is not in Whisper's vocabulary")
        return self._ids[token]

    def _bpe(self, word: str) -> list[str]:
        parts = list(word)
        while len(parts) > 1:
            rank, pair = min((self._ranks.get(p, math.inf), p) for p in itertools.pairwise(parts))
            if rank == math.inf:
                break
            merged: list[str] = []
            i = 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return parts

    def encode(self, text: str) -> list[int]:
        """Token ids of plain text (no special tokens). A leading space is part of the first word's piece."""
        ids: list[int] = []
        for word in _PRETOKENIZE_RE.findall(text):
            chars = "".join(self._byte_chars[b] for b in word.encode("utf-8"))
            ids.extend(self._ids[piece] for piece in self._bpe(chars))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of the ids; special and timestamp tokens are skipped."""
        data = bytes(self._char_bytes[c] for i in ids if i < self.eot for c in self.tokens[i])
        return data.decode("utf-8", errors="replace")


# ------------------------------------------------------------------------------------------ text and guard


def normalise_final(text: str) -> str:
    """Whisper's text in the product's form: lowercase words, numbers in words, no punctuation, apostrophes
    kept, only the characters of the CTC vocabulary (a-z, apostrophe, space).

    Numbers follow :func:`streaming_model.textnorm.normalise_for_scoring` ("$42,594" -> "forty two
    thousand five hundred ninety four dollars"); "&" is read "and" as the training texts do.
    """
    return normalise_text(normalise_for_scoring(text.replace("&", " and ")))


def repetition_cut(ids: Sequence[int], *, reached_max_length: bool, min_total_copies: int = 3) -> int:
    """Length of ``ids`` to keep so that a loop at its end is cut back to its first copy.

    A loop is a block of tokens repeated back to back up to the last token. When generation stopped at
    ``max_length`` (no end-of-text), one full extra copy, possibly followed by part of another, is a loop:
    the decoder was repeating itself when it was cut. When it ended by itself, a loop needs
    ``min_total_copies`` copies in all (people do say "no no", Whisper writes "1111" as one token).

    Returns:
        The number of leading tokens to keep (``len(ids)`` when there is no loop).
    """
    ids = list(ids)
    n = len(ids)
    for start in range(n):  # the earliest loop start wins: it keeps the least repeated text
        for period in range(1, (n - start) // 2 + 1):
            tail = n - start - period  # tokens after the first copy
            if ids[start + period] != ids[start] or ids[start + period:] != ids[start:start + tail]:
                continue
            if reached_max_length and tail >= period:
                return start + period
            if tail >= (min_total_copies - 1) * period:
                return start + period
    return n


@dataclass(frozen=True, slots=True)
class _Segment:
    start_s: float
    ids: tuple[int, ...]


def _segments(ids: Sequence[int], timestamp_begin: int) -> list[_Segment]:
    """Split timestamp-mode output into text segments with their start times."""
    out: list[_Segment] = []
    start_s = 0.0
    text: list[int] = []
    for i in ids:
        if i >= timestamp_begin:
            if text:
                out.append(_Segment(start_s, tuple(text)))
                text = []
            start_s = (i - timestamp_begin) * TIMESTAMP_STEP_S
        else:
            text.append(i)
    if text:
        out.append(_Segment(start_s, tuple(text)))
    return out


# ------------------------------------------------------------------------------------------- second pass


def _ct2_max_length(prompt_len: int, budget: int) -> tuple[int, int]:
    """``max_length`` for ctranslate2's Whisper ``generate`` that allows ``budget`` new tokens, and the
    budget it really allows (less when the decoder's 448 positions run out).

    Measured on ctranslate2 4.8.5 (its docstring says only "maximum generation length"): the new tokens
    (end-of-text excluded from the result) stop at ``min(max_length // 2, max_length - prompt_len + 1)``.
    """
    max_length = min(max(2 * budget, budget + prompt_len - 1), MAX_DECODER_POSITIONS)
    return max_length, min(max_length // 2, max_length - prompt_len + 1)



@dataclass(frozen=True, slots=True)
class SecondPassOptions:
    """How the second pass decodes (defaults: the setting chosen on the dev set, see the module report).

    ``pad_s``: silence appended to the log-mels before encoding; None pads to Whisper's 30 s window.
    ``timestamps``: timestamp mode (prompt without ``<|notimestamps|>``).
    ``first_segment_only``: in timestamp mode, keep only the text before the first end timestamp.
    ``repetition_guard``: drop segments over the pad and repeated segments, cut token loops.
    ``max_tokens_per_s`` and ``min_new_tokens``: the decoder's budget of new tokens,
    ``min_new_tokens + max_tokens_per_s * speech_s`` (dev references peak at 6.05 Whisper tokens per second;
    the constant covers punctuation and timestamps).
    ``no_repeat_ngram_size``: ctranslate2's n-gram ban during search (0: off).
    ``hotword_gate``: keep the prompted final only when it contains a hotword, else decode again without
    the prompt (a second decoder run, no second encoder run): the prompt alone cost dev WER.
    ``max_prompt_tokens``: hotword prompt tokens kept (the last ones): Whisper allows 223 (half its positions, less
    one), about 40 two-word phrases.
    """

    pad_s: float | None = 3.0
    timestamps: bool = True
    first_segment_only: bool = False
    repetition_guard: bool = True
    beam_size: int = 1
    max_tokens_per_s: float = 6.0
    min_new_tokens: int = 10
    no_repeat_ngram_size: int = 0
    hotword_gate: bool = True
    max_prompt_tokens: int = MAX_DECODER_POSITIONS // 2 - 1

    def __post_init__(self) -> None:
        if self.pad_s is not None and not 0.0 <= self.pad_s <= WINDOW_S:
            raise ValueError(f"pad_s must be None or within 0 .. {WINDOW_S} s, got {self.pad_s}")
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be at least 1, got {self.beam_size}")
        if not 0 <= self.max_prompt_tokens <= MAX_DECODER_POSITIONS // 2 - 1:
            raise ValueError(f"max_prompt_tokens must be within 0 .. {MAX_DECODER_POSITIONS // 2 - 1}, "
                             f"got {self.max_prompt_tokens}")


@dataclass(frozen=True, slots=True)
class SecondPassResult:
    """A final from the second pass.

    ``text`` is in the product's form (:func:`normalise_final`); ``whisper_text`` is Whisper's own (case,
    punctuation, digits) after the guards; ``guarded`` says whether a guard removed anything;
    ``reached_max_length`` whether the decoder was stopped by its budget; ``encode_s`` and ``decode_s`` are
    the wall times of the encoder (0 when states were given) and the decoder.
    """

    text: str
    whisper_text: str
    guarded: bool
    reached_max_length: bool
    encode_s: float
    decode_s: float


class WhisperSecondPass:
    """Whisper tiny.en's decoder (ctranslate2) over an utterance's encoder states.

    ``options`` may be replaced between calls. One ctranslate2 model runs up to ``inter_threads`` calls at
    once (from different threads), each on ``intra_threads`` threads.
    """

    def __init__(self, model_dir: str | Path | None = None, *, device: str = "cpu", compute_type: str = "int8",
                 intra_threads: int = 1, inter_threads: int = 1, options: SecondPassOptions | None = None,
                 encoder: WhisperEncoder | None = None) -> None:
        """Load the decoder (and ctranslate2's encoder) from the installed weights.

        Args:
            model_dir: a ctranslate2 Whisper folder; None: tiny.en from its pinned package.
            device, compute_type, intra_threads, inter_threads: passed to ``ctranslate2.models.Whisper``.
            options: decoding settings (defaults: :class:`SecondPassOptions`).
            encoder: a PyTorch encoder (:func:`streaming_model.pretrained.whisper.load_whisper_encoder`) to
                encode log-mels with instead of ctranslate2's own (float32 whatever ``compute_type``).
        """
        import ctranslate2

        self.model_dir = Path(model_dir) if model_dir is not None else whisper_model_dir()
        self.model = ctranslate2.models.Whisper(str(self.model_dir), device=device, compute_type=compute_type,
                                                intra_threads=intra_threads, inter_threads=inter_threads)
        self.tokenizer = WhisperTokenizer(self.model_dir)
        self.options = options if options is not None else SecondPassOptions()
        self.encoder = encoder
        self._storage_view: Any = ctranslate2.StorageView

    def prompt(self, hotwords: Sequence[str] = ()) -> list[int]:
        """Decoder prompt: the hotwords as previous text (when any), then the start of the transcript.

        Phrases go in as written, joined by commas. Capitalising their words (as names appear in Whisper's
        training text) kept the recall and cut the WER of the dev hotword set, but cost more WER on the
        plain dev set (see the module docstring), so it is left to the caller.
        """
        ids: list[int] = []
        phrases = [" ".join(p.split()) for p in hotwords if p.strip()]
        if phrases and self.options.max_prompt_tokens:
            text = self.tokenizer.encode(" " + ", ".join(phrases))
            ids = [self.tokenizer.sot_prev, *text[-self.options.max_prompt_tokens:]]
        ids.append(self.tokenizer.sot)
        if not self.options.timestamps:
            ids.append(self.tokenizer.no_timestamps)
        return ids

    def encode(self, mel: np.ndarray | torch.Tensor) -> np.ndarray:
        """Encoder states (S, D) of an utterance's log-mels (T, 80), padded with silence per ``pad_s``.

        Whisper sees at most its 30 s window: a longer utterance is cut there (its final loses the rest).
        """
        frames = np.asarray(mel.detach().cpu() if isinstance(mel, torch.Tensor) else mel, dtype=np.float32)
        if frames.ndim != 2 or frames.shape[1] != _CFG.n_mels:
            raise ValueError(f"expected log-mels of shape (T, {_CFG.n_mels}), got {frames.shape}")
        window = round(WINDOW_S / MEL_FRAME_S)
        pad = window - len(frames) if self.options.pad_s is None else round(self.options.pad_s / MEL_FRAME_S)
        bucket = round(ENCODER_BUCKET_S / MEL_FRAME_S)
        total = min(window, -(-(len(frames) + max(pad, 0)) // bucket) * bucket)  # up to a whole bucket
        total += total % 2  # the stride-2 convolution: whole encoder frames
        padded = np.full((total, frames.shape[1]), SILENCE_MEL, dtype=np.float32)  # (T, 80)
        kept = min(len(frames), total)
        padded[:kept] = frames[:kept]
        if self.encoder is not None:
            with torch.inference_mode():
                states = self.encoder(torch.from_numpy(padded)[None])  # (1, S, D)
            return np.ascontiguousarray(states[0].numpy())
        features = self._storage_view.from_array(np.ascontiguousarray(padded.T[None]))  # (1, 80, T)
        encoded: np.ndarray = np.asarray(self.model.encode(features, to_cpu=True))[0]
        return encoded

    def transcribe(self, mel: np.ndarray | torch.Tensor, *, hotwords: Sequence[str] = ()) -> SecondPassResult:
        """The final of one utterance from its Whisper log-mels (T, 80) at 10 ms (``compute_fbank`` with
        :func:`streaming_model.features.whisper_features`); the utterance is padded per the options."""
        start = time.perf_counter()
        states = self.encode(mel)
        encode_s = time.perf_counter() - start
        result = self.transcribe_states(states, speech_s=len(mel) * MEL_FRAME_S, hotwords=hotwords)
        return replace(result, encode_s=encode_s)

    def transcribe_states(self, states: np.ndarray | torch.Tensor, *, speech_s: float,
                          hotwords: Sequence[str] = ()) -> SecondPassResult:
        """The final of one utterance from encoder states (S, D) at 20 ms.

        Args:
            states: Whisper-compatible encoder states of the utterance and whatever pad the caller encoded
                after it (the streaming student's states fed silence, or :meth:`encode`'s).
            speech_s: duration of the utterance itself (without the pad): it sets the decoder's budget, and
                segments that start after it are dropped by the guard.
            hotwords: phrases to prompt the decoder with. With ``hotword_gate``, a prompted final that
                contains none of them is replaced by the final decoded without the prompt.
        """
        array = np.asarray(states.detach().cpu() if isinstance(states, torch.Tensor) else states,
                           dtype=np.float32)
        if array.ndim != 2:
            raise ValueError(f"expected encoder states of shape (S, D), got {array.shape}")
        result = self._decode(array, self.prompt(hotwords), speech_s=speech_s)
        if hotwords and self.options.hotword_gate:
            text = f" {result.text} "
            if not any(f" {normalise_final(p)} " in text for p in hotwords if normalise_final(p)):
                plain = self._decode(array, self.prompt(()), speech_s=speech_s)
                result = replace(plain, decode_s=result.decode_s + plain.decode_s)
        return result

    def _decode(self, states: np.ndarray, prompt: list[int], *, speech_s: float) -> SecondPassResult:
        """One decoder run over (S, D) states, then the guards and the normalisation."""
        opts = self.options
        budget = opts.min_new_tokens + math.ceil(opts.max_tokens_per_s * max(speech_s, 0.0))
        max_length, budget = _ct2_max_length(len(prompt), budget)
        start = time.perf_counter()
        result = self.model.generate(
            self._storage_view.from_array(np.ascontiguousarray(states[None])), [prompt],
            beam_size=opts.beam_size, max_length=max_length, no_repeat_ngram_size=opts.no_repeat_ngram_size)
        decode_s = time.perf_counter() - start
        ids = list(result[0].sequences_ids[0])  # ctranslate2 leaves the end-of-text token out
        reached = len(ids) >= budget
        text_ids, guarded = self._guard(ids, speech_s=speech_s, reached_max_length=reached)
        whisper_text = self.tokenizer.decode(text_ids).strip()
        return SecondPassResult(text=normalise_final(whisper_text), whisper_text=whisper_text, guarded=guarded,
                                reached_max_length=reached, encode_s=0.0, decode_s=decode_s)

    def _guard(self, ids: list[int], *, speech_s: float, reached_max_length: bool) -> tuple[list[int], bool]:
        """Text tokens kept after the segment and loop guards, and whether anything was removed."""
        opts = self.options
        text_count = sum(1 for i in ids if i < self.tokenizer.eot)
        if opts.timestamps:
            segments = _segments(ids, self.tokenizer.timestamp_begin)
            if opts.first_segment_only:
                segments = segments[:1]
            elif opts.repetition_guard:
                kept: list[_Segment] = []
                seen: set[str] = set()
                for segment in segments:
                    words = normalise_final(self.tokenizer.decode(segment.ids))
                    if segment.start_s >= speech_s or (words and words in seen):
                        break
                    seen.add(words)
                    kept.append(segment)
                segments = kept
            text = [i for s in segments for i in s.ids if i < self.tokenizer.eot]
        else:
            text = [i for i in ids if i < self.tokenizer.eot]
        if opts.repetition_guard:
            text = text[:repetition_cut(text, reached_max_length=reached_max_length)]
        return text, len(text) != text_count


# ------------------------------------------------------------------------------------------- alignment


@dataclass(frozen=True, slots=True)
class AlignedWord:
    """A word of a final placed on the CTC frames: ``start_frame`` inclusive, ``end_frame`` exclusive;
    ``confidence`` joins (mean, or min: :func:`align_words`'s ``reduction``) over its characters each
    character's highest posterior on the path."""

    word: str
    start_frame: int
    end_frame: int
    confidence: float


def ctc_forced_align(log_probs: np.ndarray | torch.Tensor, labels: Sequence[int], *,
                     blank: int = BLANK_ID) -> np.ndarray:
    """The most likely CTC path of ``labels`` through ``log_probs`` (Viterbi).

    Args:
        log_probs: (F, V) log-posteriors at the CTC frame rate.
        labels: token ids (none equal to ``blank``).
        blank: the blank id.
    Returns:
        (F,) index into ``labels`` of the label each frame emits, -1 for blank frames.
    Raises:
        ValueError: shapes or ids do not fit, or ``labels`` cannot fit in F frames (CTC needs one frame
            per label plus one between equal neighbours).
    """
    lp = np.asarray(log_probs.detach().cpu() if isinstance(log_probs, torch.Tensor) else log_probs,
                    dtype=np.float64)
    if lp.ndim != 2:
        raise ValueError(f"expected log-probs of shape (F, V), got {lp.shape}")
    num_frames, vocab = lp.shape
    lab = np.asarray(labels, dtype=np.int64)
    if lab.size and (lab.min() < 0 or lab.max() >= vocab or (lab == blank).any()):
        raise ValueError(f"labels must be non-blank ids below {vocab}")
    needed = len(lab) + int(np.sum(lab[1:] == lab[:-1]))
    if needed > num_frames:
        raise ValueError(f"{len(lab)} labels need at least {needed} frames, got {num_frames}")
    if num_frames == 0:
        return np.zeros(0, dtype=np.int64)
    ext = np.full(2 * len(lab) + 1, blank, dtype=np.int64)  # (L,) blank, l1, blank, l2, ..., blank
    ext[1::2] = lab
    num_states = len(ext)
    can_skip = np.zeros(num_states, dtype=bool)  # from s-2: a label whose predecessor label differs
    can_skip[3::2] = lab[1:] != lab[:-1]
    score = np.full(num_states, -np.inf)
    score[0] = lp[0, ext[0]]
    if num_states > 1:
        score[1] = lp[0, ext[1]]
    back = np.zeros((num_frames, num_states), dtype=np.int8)  # (F, L) step back: 0, 1 or 2 states
    for f in range(1, num_frames):
        stay = score
        step = np.concatenate(([-np.inf], score[:-1]))
        skip = np.where(can_skip, np.concatenate(([-np.inf, -np.inf], score[:-2])), -np.inf)
        moves = np.stack([stay, step, skip])  # (3, L)
        back[f] = np.argmax(moves, axis=0)
        score = moves[back[f], np.arange(num_states)] + lp[f, ext]
    state = num_states - 1 if num_states == 1 or score[-1] >= score[-2] else num_states - 2
    path = np.empty(num_frames, dtype=np.int64)
    for f in range(num_frames - 1, -1, -1):
        path[f] = state
        state -= int(back[f, state])  # a Python int: int8 arithmetic would wrap past 127 states
    return np.where(path % 2 == 1, path // 2, -1)


def align_words(log_probs: np.ndarray | torch.Tensor, text: str, *,
                tokenizer: CharTokenizer | None = None, reduction: str = "mean") -> list[AlignedWord]:
    """Words, frames and confidences of a final's text on the CTC posteriors of the same utterance.

    Characters outside the vocabulary are left out of the path; a word with none left gets the frame where
    its neighbours meet and confidence 0. When the text cannot fit in the frames (more characters than
    frames), every word gets confidence 0 and an even share of the frames.

    Args:
        log_probs: (F, V) CTC log-posteriors (the character vocabulary's).
        text: the final's text, already in the product's form (:func:`normalise_final`).
        tokenizer: the CTC vocabulary (default: :class:`CharTokenizer`).
        reduction: how a word's confidence joins its characters' peak posteriors: ``"mean"``, or ``"min"``
            (the statistic of the CTC decoders' word confidences, so their calibration map applies).
    """
    if reduction not in ("mean", "min"):
        raise ValueError(f"reduction: expected 'mean' or 'min', got {reduction!r}")
    tok = tokenizer if tokenizer is not None else CharTokenizer()
    lp = np.asarray(log_probs.detach().cpu() if isinstance(log_probs, torch.Tensor) else log_probs,
                    dtype=np.float64)
    if lp.ndim != 2 or lp.shape[1] != tok.vocab_size:
        raise ValueError(f"expected log-probs of shape (F, {tok.vocab_size}), got {lp.shape}")
    words = text.split()
    if not words:
        return []
    separator = tok.word_separator
    ids = {s: i for i, s in enumerate(tok.symbols)}
    labels: list[int] = []
    owner: list[int] = []  # word index of each label; -1 for the separators
    for w, word in enumerate(words):
        chars = [ids[ch] for ch in word if ch in ids and ids[ch] not in (BLANK_ID, separator)]
        if chars and labels and separator is not None:
            labels.append(separator)
            owner.append(-1)
        labels += chars
        owner += [w] * len(chars)
    num_frames = lp.shape[0]
    if len(labels) + sum(a == b for a, b in itertools.pairwise(labels)) > num_frames:
        edges = np.linspace(0, num_frames, len(words) + 1).round().astype(int)
        return [AlignedWord(word, int(a), int(b), 0.0)
                for word, a, b in zip(words, edges[:-1], edges[1:], strict=True)]
    path = ctc_forced_align(lp, labels)
    posteriors = np.exp(lp)
    frames_of: dict[int, list[int]] = {}
    for f, k in enumerate(path):
        if k >= 0:
            frames_of.setdefault(int(k), []).append(f)
    out: list[AlignedWord] = []
    cursor = 0  # where the previous word ended: an empty word is placed there
    for w, word in enumerate(words):
        mine = [k for k, o in enumerate(owner) if o == w]
        if not mine:
            out.append(AlignedWord(word, cursor, cursor, 0.0))
            continue
        first, last = frames_of[mine[0]], frames_of[mine[-1]]
        peaks = [max(posteriors[f, labels[k]] for f in frames_of[k]) for k in mine]
        score = np.min(peaks) if reduction == "min" else np.mean(peaks)
        out.append(AlignedWord(word, first[0], last[-1] + 1, float(score)))
        cursor = last[-1] + 1
    return out
