"""The dev-set report of a model: WER/CER, LM fusion tuning, hotword biasing, word confidence (``xlgate eval dev``).

Usage (each subcommand prints a table and writes its figures as JSON to ``--out``)::

    xlgate eval dev wer --manifest dev/manifests/dev.jsonl --model M --out wer.json
    xlgate eval dev tune --manifest dev/manifests/dev.jsonl --model M --out tune.json \\
        --write-lm-json streaming_model/assets/lm-en.json
    xlgate eval dev hotwords --manifest dev/manifests/dev_hotwords.jsonl \\
        --hotwords dev/hotwords.txt --model M --out hotwords.json
    xlgate eval dev confidence --manifest dev/manifests/dev.jsonl --model M --out conf.json
    xlgate eval dev calibrate --manifest dev/manifests/dev.jsonl --model M --out cal.json \\
        --write-into M

(``python -m gateway.evaluate`` is the same command.) It lives in ``gateway/`` because it drives the engine:
every figure of ``wer``, ``hotwords``, ``confidence`` and ``calibrate`` comes from the streaming engine the
server runs, set up as ``xlgate transcribe`` sets it up (:func:`gateway.offline.run_transcription`;
endpointing on, finals joined), so it is what a caller would get for the same audio and settings. ``tune``
computes the log-probabilities of each utterance once (``model.forward`` on the whole utterance, numerically
the streaming encoder's output) and re-decodes them for every grid point, feeding them one streaming step at
a time under the runner's endpoint rule (:func:`streaming_model.decoding.endpoint_reached`), so a grid
point's transcripts are the engine's; the chosen setting is then run through the engine once more, and that
WER is the ``dev_wer`` written beside the LM.

Scoring is :mod:`streaming_model.scoring`, the one normaliser and edit count of every tool.

Dimension legend: T encoder frames, V vocabulary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from gateway.config import FinalPass, Quantization
from gateway.offline import positive_int
from gateway.session import DecodingMethod, DecodingSettings, EndpointingSettings, Hotword, StreamSettings
from streaming_model.data.manifest import read_manifest, resolve_audio
from streaming_model.scoring import ErrorCounts, normalise, score_pairs, score_utterance

if TYPE_CHECKING:
    from gateway.offline import FileTranscript
    from gateway.runner import LanguageModel
    from streaming_model.checkpoint import LoadedModel
    from streaming_model.decoding import Hypothesis
    from streaming_model.ngram import NgramLM

__all__ = [
    "EngineSettings",
    "EvalItem",
    "EvaluationError",
    "HotwordCounts",
    "add_dev_arguments",
    "channel_group",
    "cmd_dev",
    "decode_log_probs",
    "expected_calibration_error",
    "hotword_counts",
    "label_hyp_words",
    "lm_json",
    "load_items",
    "main",
    "oov_counts",
    "reliability_table",
    "roc_auc",
    "run_calibrate",
    "run_confidence",
    "run_hotwords",
    "run_tune",
    "run_wer",
    "score_items",
    "transcribe_items",
    "tune_grid",
    "utterance_log_probs",
    "voice_family",
    "with_geometry",
]

LM_WEIGHTS: Final = (0.0, 0.3, 0.5, 0.7, 1.0)
WORD_BONUSES: Final = (0.0, 0.5, 1.0, 2.0)
TUNE_BEAM_SIZE: Final = 8
BEAM_SIZES: Final = (4, 8, 12)
# A wider beam is chosen only when it beats the narrower one by more than this (absolute WER): a 0.05-point
# gain on 1.1 h is noise, and the beam's cost grows with its size.
BEAM_WER_TOLERANCE: Final = 0.001
# The issue's targets for hotword biasing: recall up by 15 points, WER not worse by more than 0.3 points.
HOTWORD_RECALL_GAIN_TARGET: Final = 0.15
HOTWORD_MAX_WER_LOSS: Final = 0.003
CLEAN_CHANNEL: Final = "clean"
CONFIDENCE_BINS: Final = 10
DEFAULT_MAX_PARALLEL: Final = 16
DEFAULT_THREADS: Final = 2


class EvaluationError(RuntimeError):
    """An utterance could not be transcribed, or the inputs do not fit the command."""


# ---------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class EvalItem:
    """One manifest utterance to score: ``utt_id`` is its ``audio`` field as written in the manifest."""

    utt_id: str
    path: str
    reference: str
    duration_s: float
    subset: str
    channel: str
    voice: str = ""


def voice_family(voice: str | None) -> str:
    """The synthesiser of a generated voice (``espeak:en-gb+f1`` -> ``espeak``); ``unknown`` when unset.

    Recorded data (a customer's own manifest) usually names no voice and lands in ``unknown``.
    """
    if not voice:
        return "unknown"
    return voice.split(":", 1)[0]


def channel_group(channel: str | None) -> str:
    """``clean`` for undistorted audio, ``telephone`` for any simulated channel, ``unknown`` when unset.

    The generator tags undistorted audio ``clean`` and every other chain with its steps
    (``reverb+babble10+band+alaw``; ``none`` when the chain drew no step), see
    :func:`streaming_model.data.channel.apply_channel`.
    """
    if channel is None:
        return "unknown"
    return CLEAN_CHANNEL if channel == CLEAN_CHANNEL else "telephone"


def load_items(manifest: str | Path, *, limit: int | None = None) -> list[EvalItem]:
    """The first ``limit`` (all when None) utterances of a manifest, audio paths resolved."""
    items = [EvalItem(utt_id=u.audio, path=str(resolve_audio(manifest, u)), reference=u.text,
                      duration_s=u.duration_s, subset=u.subset or "-", channel=u.channel or "",
                      voice=u.voice or "")
             for u in read_manifest(manifest)]
    if not items:
        raise EvaluationError(f"manifest {manifest} has no utterances")
    return items[:limit] if limit is not None else items


def with_geometry(loaded: LoadedModel, *, chunk_frames: int | None = None, mem_frames: int | None = None,
                  right_frames: int | None = None) -> LoadedModel:
    """The same weights in a model with another chunk, memory and/or look-ahead size (encoder frames).

    Attention uses relative positions only, so no weight depends on these sizes; the position table and
    the relative index are rebuilt from the new config (they are not in the state dict).
    """
    from streaming_model.checkpoint import LoadedModel as Loaded
    from streaming_model.model import StreamingTransformerXL

    config = loaded.model.config
    new = replace(config, chunk_frames=config.chunk_frames if chunk_frames is None else chunk_frames,
                  mem_frames=config.mem_frames if mem_frames is None else mem_frames,
                  right_frames=config.right_frames if right_frames is None else right_frames)
    if new == config:
        return loaded
    device = next(loaded.model.parameters()).device
    model = StreamingTransformerXL(new)
    model.load_state_dict(loaded.model.state_dict(), strict=True)
    return Loaded(model=model.to(device).eval(), features=loaded.features, tokenizer=loaded.tokenizer,
                  trained=loaded.trained, info=loaded.info, path=loaded.path)


def load_language_model(spec: str, *, weight: float | None = None,
                        word_bonus: float | None = None) -> LanguageModel:
    """:meth:`LanguageModel.load` with the tuned weights optionally overridden."""
    from gateway.runner import LanguageModel

    lm = LanguageModel.load(spec)
    return replace(lm, weight=lm.weight if weight is None else weight,
                   word_bonus=lm.word_bonus if word_bonus is None else word_bonus)


# ------------------------------------------------------------------------------- engine transcription


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """How :func:`transcribe_items` runs the engine."""

    device: str = "cpu"
    num_threads: int = DEFAULT_THREADS
    max_parallel: int = DEFAULT_MAX_PARALLEL
    quantize: Quantization = Quantization.NONE  # INT8: the serving option's dynamic int8 linear layers
    final_pass: FinalPass = FinalPass.NONE  # WHISPER: finals from the second pass, as `serve --final-pass`


@dataclass(frozen=True, slots=True)
class Transcripts:
    """Finals per item (in item order) and how long the pass took."""

    finals: list[tuple[Hypothesis, ...]]
    wall_s: float

    @property
    def texts(self) -> list[str]:
        return [" ".join(h.text for h in f if h.text) for f in self.finals]


async def _transcribe(loaded: LoadedModel, paths: Sequence[str], *, decoding: DecodingSettings,
                      lm: LanguageModel, settings: EngineSettings,
                      on_done: Callable[[], None]) -> list[FileTranscript | None]:
    from gateway.offline import ReadOptions, run_transcription

    results: list[FileTranscript | None] = [None] * len(paths)

    def on_result(result: FileTranscript) -> None:
        results[result.index] = result
        on_done()

    await run_transcription(loaded, paths, settings=StreamSettings(decoding=decoding, interim_results=False),
                            read_options=ReadOptions(), max_parallel=settings.max_parallel,
                            device=settings.device, num_threads=settings.num_threads,
                            quantize=settings.quantize, lm=lm, on_result=on_result,
                            final_pass=settings.final_pass)
    return results


def transcribe_items(loaded: LoadedModel, items: Sequence[EvalItem], *, decoding: DecodingSettings,
                     lm: LanguageModel, settings: EngineSettings, desc: str = "transcribe") -> Transcripts:
    """Transcribe every item through the streaming engine (endpointing as served, interim results off).

    Raises:
        EvaluationError: a file could not be read or transcribed, or is not mono.
    """
    from tqdm import tqdm

    bar = tqdm(total=len(items), desc=desc, unit="utt", file=sys.stderr, disable=not sys.stderr.isatty(),
               leave=False)
    start = time.perf_counter()
    try:
        results = asyncio.run(_transcribe(loaded, [i.path for i in items], decoding=decoding, lm=lm,
                                          settings=settings, on_done=lambda: bar.update(1)))
    finally:
        bar.close()
    wall_s = time.perf_counter() - start
    finals: list[tuple[Hypothesis, ...]] = []
    for item, result in zip(items, results, strict=True):
        if result is None or result.error is not None:
            raise EvaluationError(f"{item.path}: {result.error if result is not None else 'no result'}")
        if len(result.channels) != 1:
            raise EvaluationError(f"{item.path}: expected mono audio, got {len(result.channels)} channels")
        finals.append(result.channels[0].utterances)
    return Transcripts(finals=finals, wall_s=wall_s)


# ----------------------------------------------------------------------------------------------- scoring


def oov_counts(texts: Iterable[str], vocab: Iterable[str]) -> tuple[int, int]:
    """(out-of-vocabulary words, words) of normalised ``texts`` against a word list."""
    known = set(vocab)
    oov = total = 0
    for text in texts:
        words = normalise(text).split()
        total += len(words)
        oov += sum(1 for w in words if w not in known)
    return oov, total


def score_items(items: Sequence[EvalItem], hyps: Sequence[str]) -> dict[str, Any]:
    """Overall, per-subset, per-channel-group and per-voice-family error counts (JSON-able)."""
    overall = ErrorCounts()
    subsets: dict[str, ErrorCounts] = {}
    channels: dict[str, ErrorCounts] = {}
    voices: dict[str, ErrorCounts] = {}
    for item, hyp in zip(items, hyps, strict=True):
        counts = score_utterance(item.reference, hyp)
        overall.add(counts)
        subsets.setdefault(item.subset, ErrorCounts()).add(counts)
        channels.setdefault(channel_group(item.channel or None), ErrorCounts()).add(counts)
        voices.setdefault(voice_family(item.voice or None), ErrorCounts()).add(counts)
    return {"overall": overall.to_json(),
            "subsets": {k: v.to_json() for k, v in sorted(subsets.items())},
            "channels": {k: v.to_json() for k, v in sorted(channels.items())},
            "voices": {k: v.to_json() for k, v in sorted(voices.items())}}


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _audio_stats(items: Sequence[EvalItem], wall_s: float) -> dict[str, Any]:
    audio_s = sum(i.duration_s for i in items)
    return {"audio_s": round(audio_s, 2), "wall_s": round(wall_s, 2),
            "wall_s_per_audio_h": round(wall_s * 3600 / audio_s, 1) if audio_s else None}


def format_scores(scores: dict[str, Any]) -> str:
    """The WER/CER table of :func:`score_items`' output."""
    header = f"{'group':<24} {'utts':>6} {'words':>7} {'WER':>8} {'CER':>8} {'sub':>6} {'del':>6} {'ins':>6}"
    lines = [header, "-" * len(header)]
    rows = [*((f"subset {k}", v) for k, v in scores["subsets"].items()),
            *((f"channel {k}", v) for k, v in scores["channels"].items()),
            *((f"voice {k}", v) for k, v in scores["voices"].items()), ("ALL", scores["overall"])]
    for name, c in rows:
        lines.append(f"{name:<24} {c['utterances']:>6} {c['ref_words']:>7} {_rate(c['wer']):>8} "
                     f"{_rate(c['cer']):>8} {c['substitutions']:>6} {c['deletions']:>6} {c['insertions']:>6}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- wer


def _decoder_json(decoding: DecodingSettings, lm: LanguageModel, lm_spec: str) -> dict[str, Any]:
    beam = decoding.method is DecodingMethod.BEAM
    return {"method": str(decoding.method), "beam_size": decoding.beam_size if beam else None,
            "lm": lm_spec if beam and lm.model is not None else None,
            "lm_weight": lm.weight if beam and lm.model is not None else None,
            "word_insertion_bonus": lm.word_bonus if beam and lm.model is not None else None,
            "hotwords": len(decoding.hotwords)}


def _geometry_json(loaded: LoadedModel) -> dict[str, Any]:
    c = loaded.model.config
    return {"chunk_frames": c.chunk_frames, "mem_frames": c.mem_frames, "right_frames": c.right_frames,
            "chunk_ms": c.chunk_ms, "mem_ms": c.mem_ms, "right_ms": c.right_ms}


def run_wer(loaded: LoadedModel, items: Sequence[EvalItem], *, decoding: DecodingSettings, lm: LanguageModel,
            lm_spec: str, settings: EngineSettings) -> dict[str, Any]:
    """WER/CER overall, per subset and per channel group, the references' OOV rate against the LM."""
    out = transcribe_items(loaded, items, decoding=decoding, lm=lm, settings=settings, desc="wer")
    report: dict[str, Any] = {"model": loaded.path, "utterances": len(items),
                              "geometry": _geometry_json(loaded),
                              "decoding": _decoder_json(decoding, lm, lm_spec),
                              **_audio_stats(items, out.wall_s),
                              **score_items(items, out.texts)}
    if lm.model is not None:
        oov, total = oov_counts((i.reference for i in items), lm.model.vocab)
        report["oov"] = {"lm": lm_spec, "oov_words": oov, "ref_words": total,
                         "rate": oov / total if total else None}
    report["per_utterance"] = [{"id": i.utt_id, "subset": i.subset, "channel": i.channel, "ref": i.reference,
                                "hyp": h} for i, h in zip(items, out.texts, strict=True)]
    return report


def format_wer(report: dict[str, Any]) -> str:
    g, d = report["geometry"], report["decoding"]
    head = (f"model {report['model']}: chunk {g['chunk_ms']} ms, memory {g['mem_ms']} ms; {d['method']}"
            + (f", beam {d['beam_size']}, lm {d['lm']} (weight {d['lm_weight']}, bonus "
               f"{d['word_insertion_bonus']})" if d["method"] == "beam" else ""))
    lines = [head, format_scores(report)]
    if "oov" in report:
        lines.append(f"reference OOV rate against the LM: {_rate(report['oov']['rate'])} "
                     f"({report['oov']['oov_words']} of {report['oov']['ref_words']} words)")
    lines.append(f"{report['audio_s'] / 3600:.2f} h of audio in {report['wall_s']:.0f} s "
                 f"({report['wall_s_per_audio_h']} s per hour of audio)")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- tune


def utterance_log_probs(loaded: LoadedModel, items: Sequence[EvalItem], *,
                        device: str = "cpu") -> list[np.ndarray]:
    """Per item, the (T, V) float32 CTC log-probabilities of the whole utterance (``model.forward``)."""
    import torch

    from gateway.audio_files import read_audio_file
    from protocols.audio.resample import resample
    from streaming_model.features import Fbank, compute_fbank

    fbank = Fbank(loaded.features)
    rate_hz = loaded.features.sample_rate_hz
    model = loaded.model.to(device).eval()
    out: list[np.ndarray] = []
    for item in items:
        clip = read_audio_file(item.path)
        if clip.num_channels != 1:
            raise EvaluationError(f"{item.path}: expected mono audio, got {clip.num_channels} channels")
        samples = clip.channels[0]
        if clip.sample_rate_hz != rate_hz:
            samples = resample(samples, from_hz=clip.sample_rate_hz, to_hz=rate_hz)
        feats = compute_fbank(samples, loaded.features, fbank)  # (4T, n_mels)
        with torch.inference_mode():
            logits, lengths = model(feats[None].to(device), torch.tensor([feats.shape[0]], device=device))
        log_probs = torch.log_softmax(logits[0, : int(lengths[0])].float(), dim=-1)  # (T, V)
        out.append(log_probs.cpu().numpy())
    return out


def decode_log_probs(log_probs: np.ndarray, loaded: LoadedModel, *, beam_size: int, lm: NgramLM | None,
                     lm_weight: float, word_bonus: float, endpointing: EndpointingSettings | None = None) -> str:
    """Beam search over one utterance's log-probabilities, as the engine's runner would run it.

    The frames are fed one streaming step (``chunk_frames``) at a time and the runner's endpoint rule
    (:func:`streaming_model.decoding.endpoint_reached`) is applied after each step, so that an utterance
    split by an endpoint in the engine is split here too; the finals' texts are joined.
    """
    from streaming_model.beam import BeamConfig, BeamDecoder
    from streaming_model.decoding import endpoint_reached

    endpointing = EndpointingSettings() if endpointing is None else endpointing
    frame_s = loaded.model.config.subsampling * loaded.features.hop_samples / loaded.features.sample_rate_hz
    step = loaded.model.config.chunk_frames
    decoder = BeamDecoder(loaded.tokenizer, BeamConfig(beam_size=beam_size, lm_weight=lm_weight,
                                                       word_insertion_bonus=word_bonus),
                          frame_s=frame_s, lm=lm)
    texts: list[str] = []
    for start in range(0, log_probs.shape[0], step):
        decoder.accept(log_probs[start:start + step])
        if endpointing.enabled and endpoint_reached(decoder, decoder.partial(), frame_s=frame_s,
                                                    silence_s=endpointing.silence_s,
                                                    max_utterance_s=endpointing.max_utterance_s):
            texts.append(decoder.finalize().text)
    texts.append(decoder.finalize().text)
    return " ".join(t for t in texts if t)


@dataclass(slots=True)
class TuneResult:
    """Every grid point's WER and the chosen setting."""

    grid: list[dict[str, Any]] = field(default_factory=list)  # lm_weight x word_bonus at TUNE_BEAM_SIZE
    beams: list[dict[str, Any]] = field(default_factory=list)  # beam sizes at the best weights
    lm_weight: float = 0.0
    word_bonus: float = 0.0
    beam_size: int = TUNE_BEAM_SIZE
    wer: float | None = None


def _corpus_wer(items: Sequence[EvalItem], hyps: Sequence[str]) -> tuple[float | None, dict[str, Any]]:
    counts = score_pairs((item.reference, hyp) for item, hyp in zip(items, hyps, strict=True))
    return counts.wer, counts.to_json()


def tune_grid(loaded: LoadedModel, items: Sequence[EvalItem], log_probs: Sequence[np.ndarray], *,
              lm: NgramLM, weights: Sequence[float] = LM_WEIGHTS, bonuses: Sequence[float] = WORD_BONUSES,
              beam_sizes: Sequence[int] = BEAM_SIZES, tune_beam: int = TUNE_BEAM_SIZE,
              on_point: Callable[[dict[str, Any]], None] | None = None) -> TuneResult:
    """Grid search of the LM weight and word bonus at ``tune_beam``, then of the beam size at the best pair.

    Ties go to the first point in grid order; a wider beam must beat the narrowest one within
    :data:`BEAM_WER_TOLERANCE` to be chosen.
    """

    def point(beam: int, weight: float, bonus: float) -> dict[str, Any]:
        hyps = [decode_log_probs(lp, loaded, beam_size=beam, lm=lm, lm_weight=weight, word_bonus=bonus)
                for lp in log_probs]
        wer, counts = _corpus_wer(items, hyps)
        row = {"beam_size": beam, "lm_weight": weight, "word_insertion_bonus": bonus, "wer": wer,
               "cer": counts["cer"], **{k: counts[k] for k in ("substitutions", "deletions", "insertions")}}
        if on_point is not None:
            on_point(row)
        return row

    def key(row: dict[str, Any]) -> float:
        return math.inf if row["wer"] is None else float(row["wer"])

    result = TuneResult()
    result.grid = [point(tune_beam, w, b) for w in weights for b in bonuses]
    best = min(result.grid, key=key)
    result.lm_weight, result.word_bonus = best["lm_weight"], best["word_insertion_bonus"]
    known = {tune_beam: best}
    result.beams = [known[b] if b in known else point(b, result.lm_weight, result.word_bonus)
                    for b in sorted(beam_sizes)]
    chosen = result.beams[0]
    for row in result.beams[1:]:
        if key(row) < key(chosen) - BEAM_WER_TOLERANCE:
            chosen = row
    result.beam_size, result.wer = chosen["beam_size"], chosen["wer"]
    return result


def run_tune(loaded: LoadedModel, items: Sequence[EvalItem], *, lm: LanguageModel, lm_spec: str,
             manifest: str, settings: EngineSettings, confirm: bool = True,
             weights: Sequence[float] = LM_WEIGHTS, bonuses: Sequence[float] = WORD_BONUSES,
             beam_sizes: Sequence[int] = BEAM_SIZES) -> dict[str, Any]:
    """:func:`tune_grid` on forward-pass log-probabilities, then the chosen setting through the engine."""
    if lm.model is None:
        raise EvaluationError(f"tune needs a language model; --lm {lm_spec} gives none")
    start = time.perf_counter()
    log_probs = utterance_log_probs(loaded, items, device=settings.device)
    forward_s = time.perf_counter() - start

    def progress(row: dict[str, Any]) -> None:
        print(f"  beam {row['beam_size']:>2} weight {row['lm_weight']:g} "
              f"bonus {row['word_insertion_bonus']:g}: WER {_rate(row['wer'])}",
              file=sys.stderr, flush=True)

    start = time.perf_counter()
    tuned = tune_grid(loaded, items, log_probs, lm=lm.model, weights=weights, bonuses=bonuses,
                      beam_sizes=beam_sizes, on_point=progress)
    grid_s = time.perf_counter() - start
    report: dict[str, Any] = {
        "model": loaded.path, "manifest": manifest, "utterances": len(items), "lm": lm_spec,
        "grid": tuned.grid, "beams": tuned.beams,
        "chosen": {"lm_weight": tuned.lm_weight, "word_insertion_bonus": tuned.word_bonus,
                   "beam_size": tuned.beam_size, "grid_wer": tuned.wer},
        "timing": {"forward_s": round(forward_s, 2), "grid_s": round(grid_s, 2),
                   "decodes": len(tuned.grid) + len(tuned.beams) - 1},
        **_audio_stats(items, forward_s + grid_s),
    }
    if confirm:
        tuned_lm = replace(lm, weight=tuned.lm_weight, word_bonus=tuned.word_bonus)
        decoding = DecodingSettings(method=DecodingMethod.BEAM, beam_size=tuned.beam_size)
        out = transcribe_items(loaded, items, decoding=decoding, lm=tuned_lm, settings=settings, desc="confirm")
        scores = score_items(items, out.texts)
        report["confirm"] = {"engine_wer": scores["overall"]["wer"], "engine_cer": scores["overall"]["cer"],
                             "wall_s": round(out.wall_s, 2), **scores}
        report["chosen"]["dev_wer"] = scores["overall"]["wer"]
    else:
        report["chosen"]["dev_wer"] = tuned.wer
    return report


def lm_json(report: dict[str, Any]) -> dict[str, Any]:
    """The tuned weights as ``LanguageModel.load`` reads them beside the LM."""
    chosen = report["chosen"]
    wer = chosen["dev_wer"]
    return {"lm_weight": chosen["lm_weight"], "word_insertion_bonus": chosen["word_insertion_bonus"],
            "beam_size": chosen["beam_size"], "tuned_on": report["manifest"],
            "dev_wer": None if wer is None else round(wer, 4)}


def format_tune(report: dict[str, Any]) -> str:
    bonuses = sorted({r["word_insertion_bonus"] for r in report["grid"]})
    weights = sorted({r["lm_weight"] for r in report["grid"]})
    beam = report["grid"][0]["beam_size"]
    lines = [f"WER at beam {beam}: LM weight (rows) x word insertion bonus (columns)",
             f"{'weight':>8} " + " ".join(f"{b:>8g}" for b in bonuses)]
    table = {(r["lm_weight"], r["word_insertion_bonus"]): r["wer"] for r in report["grid"]}
    for w in weights:
        lines.append(f"{w:>8g} " + " ".join(f"{_rate(table[(w, b)]):>8}" for b in bonuses))
    c = report["chosen"]
    lines += ["", f"beam size at weight {c['lm_weight']}, bonus {c['word_insertion_bonus']}:"]
    lines += [f"  beam {r['beam_size']:>2}: WER {_rate(r['wer'])}" for r in report["beams"]]
    lines += ["", f"chosen: lm_weight {c['lm_weight']}, word_insertion_bonus {c['word_insertion_bonus']}, "
                  f"beam {c['beam_size']}; grid WER {_rate(c['grid_wer'])}"]
    if "confirm" in report:
        lines.append(f"through the streaming engine: WER {_rate(report['confirm']['engine_wer'])}, "
                     f"CER {_rate(report['confirm']['engine_cer'])}")
    t = report["timing"]
    lines.append(f"forward {t['forward_s']:.0f} s, {t['decodes']} grid decodes {t['grid_s']:.0f} s")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- hotwords


def _contains(text: str, phrase: str) -> bool:
    return bool(phrase) and f" {phrase} " in f" {text} "


@dataclass(slots=True)
class HotwordCounts:
    """Hotword phrases per utterance: spoken (in the reference), recalled (spoken and in the hypothesis),
    falsely inserted (in the hypothesis, not in the reference). Texts are normalised for scoring."""

    spoken: int = 0
    recalled: int = 0
    false_insertions: int = 0
    per_phrase: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def recall(self) -> float | None:
        return self.recalled / self.spoken if self.spoken else None

    def to_json(self) -> dict[str, Any]:
        return {"spoken": self.spoken, "recalled": self.recalled, "recall": self.recall,
                "false_insertions": self.false_insertions,
                "per_phrase": {k: v for k, v in sorted(self.per_phrase.items()) if any(v.values())}}


def hotword_counts(phrases: Iterable[str], refs: Sequence[str], hyps: Sequence[str]) -> HotwordCounts:
    """Count spoken, recalled and falsely inserted phrases, once per (utterance, phrase)."""
    normalised = {p: normalise(p) for p in phrases}
    counts = HotwordCounts(per_phrase={p: {"spoken": 0, "recalled": 0, "false_insertions": 0}
                                       for p in normalised})
    for ref, hyp in zip(refs, hyps, strict=True):
        ref_n, hyp_n = normalise(ref), normalise(hyp)
        for phrase, norm in normalised.items():
            in_ref, in_hyp = _contains(ref_n, norm), _contains(hyp_n, norm)
            row = counts.per_phrase[phrase]
            if in_ref:
                counts.spoken += 1
                row["spoken"] += 1
                if in_hyp:
                    counts.recalled += 1
                    row["recalled"] += 1
            elif in_hyp:
                counts.false_insertions += 1
                row["false_insertions"] += 1
    return counts


def run_hotwords(loaded: LoadedModel, items: Sequence[EvalItem], hotwords: Sequence[Hotword], *,
                 beam_size: int, lm: LanguageModel, lm_spec: str, settings: EngineSettings) -> dict[str, Any]:
    """Beam search without and with the hotword list (same beam and LM): recall, insertions, WER, deltas."""
    phrases = [h.phrase for h in hotwords]
    refs = [i.reference for i in items]
    report: dict[str, Any] = {"model": loaded.path, "utterances": len(items), "phrases": len(phrases),
                              "ids": [i.utt_id for i in items],
                              "decoding": _decoder_json(DecodingSettings(method=DecodingMethod.BEAM,
                                                                         beam_size=beam_size,
                                                                         hotwords=tuple(hotwords)), lm, lm_spec)}
    wall_s = 0.0
    listed: tuple[Hotword, ...]
    for name, listed in (("without", ()), ("with", tuple(hotwords))):
        decoding = DecodingSettings(method=DecodingMethod.BEAM, beam_size=beam_size, hotwords=listed)
        out = transcribe_items(loaded, items, decoding=decoding, lm=lm, settings=settings,
                               desc=f"{name} hotwords")
        wall_s += out.wall_s
        scores = score_items(items, out.texts)
        report[name] = {"wer": scores["overall"]["wer"], "cer": scores["overall"]["cer"],
                        **hotword_counts(phrases, refs, out.texts).to_json(), "scores": scores,
                        "hyps": out.texts}
    without, with_ = report["without"], report["with"]

    def delta(key: str) -> float | None:
        a, b = without[key], with_[key]
        return None if a is None or b is None else b - a

    report["delta"] = {"recall": delta("recall"), "wer": delta("wer"),
                       "false_insertions": with_["false_insertions"] - without["false_insertions"]}
    d = report["delta"]
    report["targets"] = {
        "recall_gain_min": HOTWORD_RECALL_GAIN_TARGET, "wer_loss_max": HOTWORD_MAX_WER_LOSS,
        "recall_met": None if d["recall"] is None else d["recall"] >= HOTWORD_RECALL_GAIN_TARGET,
        "wer_met": None if d["wer"] is None else d["wer"] <= HOTWORD_MAX_WER_LOSS}
    report.update(_audio_stats(items, wall_s))
    return report


def format_hotwords(report: dict[str, Any]) -> str:
    header = (f"{'hotwords':<10} {'WER':>8} {'CER':>8} {'spoken':>7} {'recalled':>9} {'recall':>8} "
              f"{'false ins':>10}")
    lines = [f"{report['phrases']} phrases, {report['utterances']} utterances, beam "
             f"{report['decoding']['beam_size']}, lm {report['decoding']['lm']}", header, "-" * len(header)]
    for name in ("without", "with"):
        r = report[name]
        lines.append(f"{name:<10} {_rate(r['wer']):>8} {_rate(r['cer']):>8} {r['spoken']:>7} "
                     f"{r['recalled']:>9} {_rate(r['recall']):>8} {r['false_insertions']:>10}")
    d, t = report["delta"], report["targets"]

    def points(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:+.2f}"

    lines.append(f"{'delta':<10} {points(d['wer']):>8} {'':>8} {'':>7} {'':>9} {points(d['recall']):>8} "
                 f"{d['false_insertions']:>+10}")
    lines.append(f"targets: recall +{100 * t['recall_gain_min']:.0f} points ({_met(t['recall_met'])}), "
                 f"WER not worse by more than {100 * t['wer_loss_max']:.1f} points ({_met(t['wer_met'])})")
    return "\n".join(lines)


def _met(flag: bool | None) -> str:
    return "n/a" if flag is None else ("met" if flag else "NOT met")


# --------------------------------------------------------------------------------------------- confidence


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Area under the ROC curve of ``scores`` for ``labels`` (Mann-Whitney U; tied scores count one half).

    Returns None when either class is empty.
    """
    if len(scores) != len(labels):
        raise ValueError(f"scores and labels differ in length: {len(scores)} and {len(labels)}")
    n_pos = sum(1 for y in labels if y)
    n_neg = len(labels) - n_pos
    if not n_pos or not n_neg:
        return None
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        mean_rank = (i + j) / 2 + 1  # 1-based average rank of a run of ties
        for k in range(i, j + 1):
            ranks[order[k]] = mean_rank
        i = j + 1
    pos_rank_sum = sum(r for r, y in zip(ranks, labels, strict=True) if y)
    return (pos_rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def label_hyp_words(reference: str, words: Sequence[tuple[str, float]]) -> list[tuple[str, float, bool]]:
    """Each hypothesis word (text, confidence) as (normalised word, confidence, correct).

    A word is correct when jiwer's alignment against the normalised reference marks it ``equal``. A word
    that normalises into several (a digit string) gives each of them its confidence; one that normalises
    to nothing is dropped.
    """
    import jiwer

    hyp = [(w, conf) for text, conf in words for w in normalise(text).split()]
    if not hyp:
        return []
    ref = normalise(reference)
    if not ref:
        return [(w, c, False) for w, c in hyp]
    correct = [False] * len(hyp)
    alignment = jiwer.process_words(ref, " ".join(w for w, _ in hyp)).alignments[0]
    for chunk in alignment:
        if chunk.type == "equal":
            for k in range(chunk.hyp_start_idx, chunk.hyp_end_idx):
                correct[k] = True
    return [(w, c, ok) for (w, c), ok in zip(hyp, correct, strict=True)]


def reliability_table(confidences: Sequence[float], labels: Sequence[bool], *,
                      bins: int = CONFIDENCE_BINS) -> list[dict[str, Any]]:
    """Equal-width confidence bins over [0, 1]: count, mean confidence and accuracy of each."""
    rows = []
    conf = np.asarray(confidences, dtype=np.float64)
    ok = np.asarray(labels, dtype=bool)
    index = np.minimum((conf * bins).astype(np.int64), bins - 1) if conf.size else conf.astype(np.int64)
    for b in range(bins):
        mask = index == b
        n = int(mask.sum())
        rows.append({"low": b / bins, "high": (b + 1) / bins, "words": n,
                     "mean_confidence": float(conf[mask].mean()) if n else None,
                     "accuracy": float(ok[mask].mean()) if n else None})
    return rows


def expected_calibration_error(table: Sequence[dict[str, Any]]) -> float | None:
    """Word-weighted mean |accuracy - confidence| over the bins of :func:`reliability_table`."""
    total = sum(int(r["words"]) for r in table)
    if not total:
        return None
    gap = sum(float(r["words"] * abs(r["accuracy"] - r["mean_confidence"])) for r in table if r["words"])
    return gap / total


def run_confidence(loaded: LoadedModel, items: Sequence[EvalItem], *, decoding: DecodingSettings,
                   lm: LanguageModel, lm_spec: str, settings: EngineSettings) -> dict[str, Any]:
    """Word confidences of the engine's finals against jiwer's alignment: ROC AUC and reliability."""
    out = transcribe_items(loaded, items, decoding=decoding, lm=lm, settings=settings, desc="confidence")
    confs, labels = _flatten(_labelled_words(items, out.finals))
    table = reliability_table(confs, labels)
    return {"model": loaded.path, "utterances": len(items), "decoding": _decoder_json(decoding, lm, lm_spec),
            "hyp_words": len(labels), "correct_words": sum(labels),
            "word_accuracy": sum(labels) / len(labels) if labels else None,
            "auc": roc_auc(confs, labels), "ece": expected_calibration_error(table), "reliability": table,
            "wer": score_items(items, out.texts)["overall"]["wer"], **_audio_stats(items, out.wall_s)}


def _labelled_words(items: Sequence[EvalItem],
                    finals: Sequence[Sequence[Hypothesis]]) -> list[list[tuple[float, bool]]]:
    """Per utterance, each final word's (confidence, correct) against the reference."""
    out = []
    for item, hyps in zip(items, finals, strict=True):
        words = [(w.text, w.confidence) for hyp in hyps for w in hyp.words]
        out.append([(conf, ok) for _, conf, ok in label_hyp_words(item.reference, words)])
    return out


def _flatten(groups: Sequence[Sequence[tuple[float, bool]]]) -> tuple[list[float], list[bool]]:
    """Grouped (confidence, correct) pairs as two flat lists."""
    return [c for g in groups for c, _ in g], [ok for g in groups for _, ok in g]


def run_calibrate(loaded: LoadedModel, items: Sequence[EvalItem], *, decoding: DecodingSettings,
                  lm: LanguageModel, lm_spec: str, settings: EngineSettings) -> dict[str, Any]:
    """Fit the Platt map of word confidences (:class:`ConfidenceCalibration`) on the engine's finals.

    The engine runs with the checkpoint's own map switched off, so the fit sees raw confidences. The
    reported ECE after calibration is cross-fitted (two folds of utterances: each half scored with the
    map fitted on the other), so it is not measured on the words the map was fitted to.
    """
    from streaming_model.decoding import CALIBRATION_INFO_KEY, ConfidenceCalibration

    raw = replace(loaded, info={k: v for k, v in loaded.info.items() if k != CALIBRATION_INFO_KEY})
    out = transcribe_items(raw, items, decoding=decoding, lm=lm, settings=settings, desc="calibrate")
    per_utt = _labelled_words(items, out.finals)
    confs, labels = _flatten(per_utt)
    try:
        fitted = ConfidenceCalibration.fit(confs, labels)
        cross: list[list[tuple[float, bool]]] = []
        for fold in (0, 1):
            cal = ConfidenceCalibration.fit(*_flatten([utt for i, utt in enumerate(per_utt) if i % 2 != fold]))
            cross.append([(cal.word(c), ok) for i, utt in enumerate(per_utt) if i % 2 == fold for c, ok in utt])
    except ValueError as exc:
        raise EvaluationError(f"cannot fit a confidence calibration on {len(items)} utterances: {exc}") from exc
    before = reliability_table(confs, labels)
    after = reliability_table(*_flatten(cross))
    return {"model": loaded.path, "utterances": len(items), "decoding": _decoder_json(decoding, lm, lm_spec),
            "hyp_words": len(labels), "correct_words": sum(labels),
            "calibration": fitted.to_json(), "auc": roc_auc(confs, labels),
            "ece_raw": expected_calibration_error(before), "ece_cross_fitted": expected_calibration_error(after),
            "reliability_raw": before, "reliability_cross_fitted": after,
            **_audio_stats(items, out.wall_s)}


def format_calibrate(report: dict[str, Any]) -> str:
    cal = report["calibration"]
    lines = [f"{report['hyp_words']} hypothesis words, {report['correct_words']} correct; "
             f"p' = sigmoid({cal['scale']:.4f} * logit(p) + {cal['shift']:.4f})",
             f"ECE raw {_rate(report['ece_raw'])}, calibrated (2-fold cross-fitted) "
             f"{_rate(report['ece_cross_fitted'])}",
             f"{'confidence':<12} {'words':>7} {'raw acc':>9} {'cal words':>10} {'cal acc':>9}"]
    for r, c in zip(report["reliability_raw"], report["reliability_cross_fitted"], strict=True):
        span = f"{r['low']:.1f}-{r['high']:.1f}"
        lines.append(f"{span:<12} {r['words']:>7} {_rate(r['accuracy']):>9} {c['words']:>10} "
                     f"{_rate(c['accuracy']):>9}")
    return "\n".join(lines)


def format_confidence(report: dict[str, Any]) -> str:
    auc = report["auc"]
    lines = [f"{report['hyp_words']} hypothesis words, {report['correct_words']} correct "
             f"(WER {_rate(report['wer'])}); ROC AUC of word confidence: "
             f"{'n/a' if auc is None else f'{auc:.3f}'}; ECE {_rate(report['ece'])}",
             f"{'confidence':<12} {'words':>7} {'mean conf':>10} {'accuracy':>9}"]
    for r in report["reliability"]:
        span = f"{r['low']:.1f}-{r['high']:.1f}"
        lines.append(f"{span:<12} {r['words']:>7} {_rate(r['mean_confidence']):>10} "
                     f"{_rate(r['accuracy']):>9}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ command line


def _float_list(text: str) -> tuple[float, ...]:
    """A comma-separated list of non-negative numbers (a tune grid axis)."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers >= 0, got {text!r}")
    return values


def _int_list(text: str) -> tuple[int, ...]:
    """A comma-separated list of positive integers (beam sizes)."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got {text!r}")
    return values


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def add_dev_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``xlgate eval dev`` subcommands (wer, tune, hotwords, confidence, calibrate); sets ``func`` to
    :func:`cmd_dev`."""
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--manifest", required=True, help="JSON-lines manifest (audio, text, duration_s)")
    common.add_argument("--model", required=True, help="a .safetensors checkpoint")
    common.add_argument("--out", required=True, metavar="JSON", help="where to write the figures")
    common.add_argument("--limit", type=positive_int, default=None, metavar="N",
                        help="only the first N utterances")
    common.add_argument("--lm", default="bundled", help="'bundled', 'none' or a path to an .npz/.arpa LM "
                                                        "(tuned weights read from the .json beside it)")
    common.add_argument("--lm-weight", type=float, default=None, help="override the LM weight")
    common.add_argument("--word-bonus", type=float, default=None, help="override the word insertion bonus")
    common.add_argument("--chunk-frames", type=positive_int, default=None, metavar="L",
                        help="encoder frames per streaming step (20 ms each for the bundled student), instead "
                             "of the checkpoint's")
    common.add_argument("--mem-frames", type=_non_negative_int, default=None, metavar="M",
                        help="encoder frames of attention memory, instead of the checkpoint's")
    common.add_argument("--right-frames", type=_non_negative_int, default=None, metavar="R",
                        help="encoder frames of look-ahead after each chunk, instead of the checkpoint's")
    common.add_argument("--device", default="cpu", help="torch device (default cpu)")
    common.add_argument("--quantize", type=Quantization, choices=tuple(Quantization), default=Quantization.NONE,
                        help="serve the linear layers in dynamic int8, as `xlgate serve --quantize int8`")
    common.add_argument("--threads", type=positive_int, default=DEFAULT_THREADS,
                        help=f"torch threads of the model (default {DEFAULT_THREADS})")
    common.add_argument("--max-parallel", type=positive_int, default=DEFAULT_MAX_PARALLEL,
                        help=f"streams batched together in the engine (default {DEFAULT_MAX_PARALLEL})")
    common.add_argument("--final-pass", type=FinalPass, choices=tuple(FinalPass), default=FinalPass.NONE,
                        help="finals from the CTC decoder ('none', default) or Whisper's second pass "
                             "('whisper', as `xlgate serve --final-pass whisper`; offline it is not shed for time)")
    decoding = argparse.ArgumentParser(add_help=False)
    decoding.add_argument("--decoding", type=DecodingMethod, choices=tuple(DecodingMethod),
                          default=DecodingMethod.GREEDY)
    decoding.add_argument("--beam-size", type=positive_int, default=TUNE_BEAM_SIZE)

    sub.add_parser("wer", parents=[common, decoding], help="WER/CER per subset and channel, OOV rate")
    tune = sub.add_parser("tune", parents=[common], help="grid-search LM weight, word bonus and beam size")
    tune.add_argument("--write-lm-json", default=None, metavar="PATH",
                      help="write the chosen weights here (e.g. streaming_model/assets/lm-en.json)")
    tune.add_argument("--no-confirm", action="store_true",
                      help="skip the engine pass with the chosen setting (dev_wer is then the grid's)")
    tune.add_argument("--lm-weights", type=_float_list, default=LM_WEIGHTS, metavar="W,W,...",
                      help=f"LM weights of the grid (default {','.join(map(str, LM_WEIGHTS))})")
    tune.add_argument("--word-bonuses", type=_float_list, default=WORD_BONUSES, metavar="B,B,...",
                      help=f"word insertion bonuses of the grid (default {','.join(map(str, WORD_BONUSES))})")
    tune.add_argument("--beam-sizes", type=_int_list, default=BEAM_SIZES, metavar="N,N,...",
                      help=f"beam sizes tried at the best weights (default {','.join(map(str, BEAM_SIZES))}; "
                           f"the grid itself runs at beam {TUNE_BEAM_SIZE})")
    hot = sub.add_parser("hotwords", parents=[common], help="recall and WER without and with a hotword list")
    hot.add_argument("--hotwords", required=True, metavar="FILE", help="one 'phrase[<TAB>boost]' a line")
    hot.add_argument("--beam-size", type=positive_int, default=TUNE_BEAM_SIZE)
    sub.add_parser("confidence", parents=[common, decoding],
                   help="ROC AUC and reliability of word confidence")
    cal = sub.add_parser("calibrate", parents=[common, decoding],
                         help="fit the word-confidence calibration (Platt scaling) on the engine's finals")
    cal.add_argument("--write-into", default=None, metavar="CHECKPOINT",
                     help="store the fitted map in this checkpoint's info (e.g. the bundled model)")
    parser.set_defaults(func=cmd_dev)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m gateway.evaluate`` parser: the same subcommands as ``xlgate eval dev``."""
    parser = argparse.ArgumentParser(prog="python -m gateway.evaluate",
                                     description="The dev-set report of a model (the same as `xlgate eval dev`).")
    add_dev_arguments(parser)
    return parser


def _write_json(path: str | Path, data: dict[str, Any]) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gateway.evaluate``: run one subcommand. Returns 0, or 2 for unusable inputs."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return cmd_dev(args, parser)


def cmd_dev(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run one ``xlgate eval dev`` subcommand. Returns 0, or 2 for unusable inputs."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import torch

    from gateway.config import ConfigError, load_hotwords_file
    from gateway.models import load_model
    from streaming_model.checkpoint import CheckpointError
    from streaming_model.data.manifest import ManifestError

    torch.set_num_threads(args.threads)
    settings = EngineSettings(device=args.device, num_threads=args.threads, max_parallel=args.max_parallel,
                              final_pass=args.final_pass,
                              quantize=args.quantize)
    try:
        items = load_items(args.manifest, limit=args.limit)
        loaded = with_geometry(load_model(args.model, args.device, warn=False),
                               chunk_frames=args.chunk_frames, mem_frames=args.mem_frames,
                               right_frames=args.right_frames)
        lm = load_language_model(args.lm, weight=args.lm_weight, word_bonus=args.word_bonus)
        hotwords = (tuple(load_hotwords_file(Path(args.hotwords))) if args.command == "hotwords" else ())
    except (CheckpointError, ConfigError, EvaluationError, ManifestError, OSError, ValueError) as exc:
        print(f"xlgate eval dev {args.command}: error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "wer":
            decoding = DecodingSettings(method=args.decoding, beam_size=args.beam_size)
            report = run_wer(loaded, items, decoding=decoding, lm=lm, lm_spec=args.lm, settings=settings)
            text = format_wer(report)
        elif args.command == "tune":
            report = run_tune(loaded, items, lm=lm, lm_spec=args.lm, manifest=args.manifest,
                              settings=settings, confirm=not args.no_confirm, weights=args.lm_weights,
                              bonuses=args.word_bonuses, beam_sizes=args.beam_sizes)
            text = format_tune(report)
            if args.write_lm_json is not None:
                _write_json(args.write_lm_json, lm_json(report))
                text += f"\nwrote {args.write_lm_json}"
        elif args.command == "hotwords":
            report = run_hotwords(loaded, items, hotwords, beam_size=args.beam_size,
                                  lm=lm, lm_spec=args.lm, settings=settings)
            text = format_hotwords(report)
        elif args.command == "calibrate":
            decoding = DecodingSettings(method=args.decoding, beam_size=args.beam_size)
            report = run_calibrate(loaded, items, decoding=decoding, lm=lm, lm_spec=args.lm, settings=settings)
            text = format_calibrate(report)
            if args.write_into is not None:
                from streaming_model.checkpoint import update_info
                from streaming_model.decoding import CALIBRATION_INFO_KEY

                update_info(args.write_into, {CALIBRATION_INFO_KEY: report["calibration"],
                                              f"{CALIBRATION_INFO_KEY}_fitted_on": args.manifest})
                text += f"\nwrote the calibration into {args.write_into}"
        else:
            decoding = DecodingSettings(method=args.decoding, beam_size=args.beam_size)
            report = run_confidence(loaded, items, decoding=decoding, lm=lm, lm_spec=args.lm, settings=settings)
            text = format_confidence(report)
    except (CheckpointError, EvaluationError, OSError) as exc:
        print(f"xlgate eval dev {args.command}: error: {exc}", file=sys.stderr)
        return 2
    report = {"command": args.command, "manifest": args.manifest, **report}
    _write_json(args.out, report)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
