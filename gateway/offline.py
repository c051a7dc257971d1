"""``xlgate transcribe`` and ``xlgate eval score``: offline transcription through the streaming engine, and scoring.

Transcription does not have an offline code path of its own: it builds the same :class:`ModelRunner` and
:class:`Engine` the server runs, opens one :class:`Stream` per channel of each file (protocol ``local``),
feeds the audio as fast as backpressure allows and keeps the finals. What ``transcribe`` prints is
therefore what a live caller would have received for the same audio and parameters. Up to
``--max-parallel`` streams are live at once, so several files share every batched model step.

Files are read one ahead of the streams that are running (memory stays bounded by ``--max-parallel``
files); results are printed in the order the files were given, as soon as every earlier file is done.
stdout carries only results; warnings, progress and per-file errors go to stderr.

``xlgate eval score`` reads, normalises and counts with :mod:`streaming_model.scoring`, the one scoring
module of every tool; this module only prints its report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

from gateway.config import (
    BUNDLED_MODEL,
    ConfigError,
    FinalPass,
    Quantization,
    add_option_arguments,
    load_hotwords_file,
)
from gateway.loop import run_async
from gateway.session import DEFAULT_HOTWORD_BOOST, Hotword, StreamSettings, merge_hotwords
from protocols.errors import GatewayError
from streaming_model.scoring import IdReport, TsvError, read_transcripts_tsv, score_by_id

# The engine, torch and the audio stack are imported where they are used: the CLI builds every
# subcommand's parser, and `xlgate eval score` or `xlgate stream --help` should not pay for loading them.
if TYPE_CHECKING:
    from gateway.audio_files import AudioClip
    from gateway.engine import Engine, Stream
    from gateway.runner import LanguageModel
    from streaming_model.checkpoint import LoadedModel
    from streaming_model.decoding import Hypothesis

__all__ = [
    "ChannelTranscript",
    "FileTranscript",
    "ReadOptions",
    "TranscriptionFailedError",
    "add_score_arguments",
    "add_transcribe_arguments",
    "cmd_score",
    "cmd_transcribe",
    "parse_hotword",
    "run_transcription",
    "transcribe_clip",
    "transcribe_files",
]

log = logging.getLogger("xlgate.offline")

FEED_PIECE_S = 0.5  # audio handed to Stream.feed at a time; the stream cuts its own model chunks
DEFAULT_MAX_PARALLEL = 16
# No caller is waiting on a partial here: a short batching window only covers the feeders' turnaround.
OFFLINE_MAX_WAIT_S = 0.005
OFFLINE_MAX_PENDING_CHUNKS = 8  # per stream; feeding waits (backpressure) beyond this
# Offline, the second pass is never shed for time; this bounds its queue (each entry holds one utterance's
# log-mels, ~100 kB for 3 s: feeding runs ahead of the second pass by at most this many utterances' memory)
OFFLINE_MAX_PENDING_SECOND_PASSES = 1024
# protocols.audio.pcm.WIRE_ENCODINGS (a test keeps them equal), spelled out to keep numpy out of --help.
RAW_ENCODINGS: Final = ("alaw", "mulaw", "pcm_s16le")


class TranscriptionFailedError(GatewayError):
    """A stream of a file ended without completing (aborted by the engine, or a model step failed)."""

    code = "transcription_failed"


# ------------------------------------------------------------------------------------------ transcription


@dataclass(frozen=True, slots=True)
class ChannelTranscript:
    """The finals of one channel of one file, in order."""

    channel: int
    utterances: tuple[Hypothesis, ...]

    @property
    def text(self) -> str:
        """The utterances' texts joined by single spaces."""
        return " ".join(u.text for u in self.utterances if u.text)


@dataclass(frozen=True, slots=True)
class FileTranscript:
    """The outcome for the ``index``-th file given: its channels' transcripts, or why it failed."""

    index: int
    path: str
    channels: tuple[ChannelTranscript, ...] = ()
    error: str | None = None

    def channel_id(self, channel: int) -> str:
        """The TSV id of a channel: the path itself for a mono file, ``path#N`` otherwise."""
        return self.path if len(self.channels) == 1 else f"{self.path}#{channel}"


@dataclass(frozen=True, slots=True)
class ReadOptions:
    """How headerless files are decoded (see :func:`gateway.audio_files.read_audio_file`)."""

    raw_encoding: str | None = None
    raw_sample_rate_hz: int = 8000
    raw_channels: int = 1


class _StreamBudget:
    """Counts the engine's free streams so that a file's channels are admitted together, never refused."""

    def __init__(self, total: int) -> None:
        self._free = total
        self._changed = asyncio.Condition()

    async def acquire(self, count: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._free >= count)
            self._free -= count

    async def release(self, count: int) -> None:
        async with self._changed:
            self._free += count
            self._changed.notify_all()


async def _collect_finals(stream: Stream) -> tuple[Hypothesis, ...]:
    from gateway.session import Outcome, ResultEvent, StreamEnded

    finals: list[Hypothesis] = []
    async for event in stream.events():
        if isinstance(event, ResultEvent) and event.is_final:
            finals.append(event.hypothesis)
        elif isinstance(event, StreamEnded) and event.outcome is not Outcome.COMPLETED:
            raise TranscriptionFailedError(f"channel {stream.channel}: recognition ended as {event.outcome!r}")
    return tuple(finals)


async def transcribe_clip(engine: Engine, clip: AudioClip, settings: StreamSettings, *,
                          piece_s: float = FEED_PIECE_S) -> tuple[ChannelTranscript, ...]:
    """Recognise every channel of ``clip`` through ``engine``, as fast as backpressure allows.

    The caller makes sure the engine has room for ``clip.num_channels`` streams.

    Args:
        engine: A running engine.
        clip: The audio; each channel becomes one stream at the clip's own sample rate.
        settings: The streams' settings; ``sample_rate_hz`` is replaced by the clip's rate.
        piece_s: Seconds of audio handed to :meth:`Stream.feed` at a time.

    Returns:
        One transcript per channel, in channel order.

    Raises:
        TranscriptionFailedError: A stream did not complete (inside an ExceptionGroup).
    """
    clip_settings = replace(settings, sample_rate_hz=clip.sample_rate_hz)
    streams = engine.open_streams(clip.num_channels, clip_settings, protocol="local")
    piece = max(1, round(piece_s * clip.sample_rate_hz))
    try:
        async with asyncio.TaskGroup() as tg:
            readers = [tg.create_task(_collect_finals(s), name=f"finals-{s.stream_id}") for s in streams]
            for start in range(0, clip.num_frames, piece):
                for stream, samples in zip(streams, clip.channels, strict=True):
                    await stream.feed(samples[start:start + piece])
            for stream in streams:
                await stream.stop()
    finally:
        for stream in streams:
            stream.abort()  # no-op for streams that ended; frees the rest if we were cancelled
    return tuple(ChannelTranscript(s.channel, r.result()) for s, r in zip(streams, readers, strict=True))


def _failure_reason(exc: BaseException) -> str:
    """The most telling message inside a (possibly grouped) exception."""
    if isinstance(exc, BaseExceptionGroup):
        leaves = [_failure_reason(e) for e in exc.exceptions]
        failed = [e for e in exc.exceptions if isinstance(e, TranscriptionFailedError)]
        return _failure_reason(failed[0]) if failed else "; ".join(leaves)
    from protocols.audio.errors import AudioFileError

    if isinstance(exc, AudioFileError):
        return exc.reason  # the path is printed beside it already
    return str(exc) or type(exc).__name__


def _is_expected(exc: BaseException) -> bool:
    """Our own errors (a stream aborted, a failed step already logged by the engine), not a bug here."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_expected(e) for e in exc.exceptions)
    return isinstance(exc, GatewayError)


async def transcribe_files(engine: Engine, paths: Sequence[str], *, settings: StreamSettings,
                           read_options: ReadOptions, on_result: Callable[[FileTranscript], None]) -> None:
    """Transcribe ``paths`` through ``engine``, with up to ``engine.max_streams`` channels live at once.

    ``on_result`` is called once per file, in completion order, with its transcript or its error; one
    file's failure does not stop the others.
    """
    from gateway.audio_files import read_audio_file
    from protocols.audio.errors import AudioError, AudioFileError
    from protocols.audio.resample import StreamingResampler

    budget = _StreamBudget(engine.max_streams)
    model_rate_hz = engine.runner.info.features.sample_rate_hz

    async def run_one(index: int, path: str, clip: AudioClip) -> None:
        try:
            channels = await transcribe_clip(engine, clip, settings)
        except Exception as exc:  # one file's failure must not stop the others
            if not _is_expected(exc):  # a bug: say so with a traceback
                log.error("%s: transcription failed", path, exc_info=exc)
            on_result(FileTranscript(index, path, error=f"transcription failed: {_failure_reason(exc)}"))
        else:
            on_result(FileTranscript(index, path, channels=channels))
        finally:
            await budget.release(clip.num_channels)

    async with asyncio.TaskGroup() as tg:
        for index, path in enumerate(paths):
            try:
                clip = await asyncio.to_thread(
                    read_audio_file, path, raw_encoding=read_options.raw_encoding,
                    raw_sample_rate_hz=read_options.raw_sample_rate_hz, raw_channels=read_options.raw_channels)
                if clip.num_channels > engine.max_streams:
                    raise AudioFileError(path, f"has {clip.num_channels} channels, more than --max-parallel "
                                               f"({engine.max_streams}) streams")
                if clip.sample_rate_hz != model_rate_hz:
                    StreamingResampler(clip.sample_rate_hz, model_rate_hz)  # unsupported ratios fail here
            except AudioError as exc:
                on_result(FileTranscript(index, path, error=_failure_reason(exc)))
                continue
            await budget.acquire(clip.num_channels)
            tg.create_task(run_one(index, path, clip), name=f"transcribe-{index}")


async def run_transcription(loaded: LoadedModel, paths: Sequence[str], *, settings: StreamSettings,
                            read_options: ReadOptions, max_parallel: int, device: str,
                            on_result: Callable[[FileTranscript], None], num_threads: int | None = None,
                            quantize: Quantization = Quantization.NONE,
                            lm: LanguageModel | None = None, final_pass: FinalPass = FinalPass.NONE) -> None:
    """Build a runner and an engine for ``loaded``, transcribe ``paths`` (see :func:`transcribe_files`),
    and shut the engine down.

    This is the one offline set-up of the engine: ``xlgate transcribe`` and the dev-set report
    (:mod:`gateway.evaluate`) both call it.

    Args:
        loaded: The model.
        paths: The audio files.
        settings: Every stream's settings (the sample rate is each file's own).
        read_options: How headerless files are decoded.
        max_parallel: Streams live and batched at once.
        device: Torch device of the model.
        on_result: Called once per file, in completion order.
        num_threads: Torch threads of the model's thread (None: torch's default).
        quantize: The serving option's linear-layer quantisation.
        lm: The word LM of beam search (None: no LM).
        final_pass: Where finals come from, as the serving option. Offline, no second pass is shed: a final
            waits for it however long the queue (bounded by :data:`OFFLINE_MAX_PENDING_SECOND_PASSES`).
    """
    from gateway.engine import Engine
    from gateway.metrics import Metrics
    from gateway.runner import ModelRunner, ThreadRunner

    runner = ThreadRunner(ModelRunner(loaded, max_streams=max_parallel, device=device, num_threads=num_threads,
                                      quantize=quantize, lm=lm, final_pass=final_pass,
                                      final_pass_budget_s=math.inf,
                                      final_pass_max_pending=OFFLINE_MAX_PENDING_SECOND_PASSES))
    engine = Engine(runner, metrics=Metrics(), max_streams=max_parallel, max_batch_size=max_parallel,
                    max_wait_s=OFFLINE_MAX_WAIT_S, max_pending_chunks=OFFLINE_MAX_PENDING_CHUNKS)
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(engine.run(), name="engine")
            try:
                await transcribe_files(engine, paths, settings=settings, read_options=read_options,
                                       on_result=on_result)
            finally:
                engine.close()
    finally:
        await runner.close()


# ---------------------------------------------------------------------------------------------- output


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def utterance_json(hyp: Hypothesis) -> dict[str, Any]:
    """One final as a JSON-able dict (times in milliseconds from the start of the file)."""
    return {
        "text": hyp.text,
        "start_ms": _ms(hyp.start_s),
        "end_ms": _ms(hyp.end_s),
        "confidence": round(hyp.confidence, 4),
        "words": [{"word": w.text, "start_ms": _ms(w.start_s), "end_ms": _ms(w.end_s),
                   "confidence": round(w.confidence, 4)} for w in hyp.words],
    }


class _Reporter:
    """Writes results to stdout in the order the files were given, errors and progress to stderr."""

    def __init__(self, *, fmt: str, total: int, out: TextIO, err: TextIO) -> None:
        self.fmt = fmt
        self.out = out
        self.err = err
        self.failed = 0
        self._pending: dict[int, FileTranscript] = {}
        self._next = 0
        self._bar: Any = None
        if err.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, file=err, unit="file", desc="transcribe", leave=False)

    def message(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line, file=self.err)
        else:
            print(line, file=self.err, flush=True)

    def error(self, path: str, reason: str) -> None:
        self.failed += 1
        self.message(f"xlgate transcribe: error: {path}: {reason}")

    def __call__(self, result: FileTranscript) -> None:
        if result.error is not None:
            self.error(result.path, result.error)
        if self._bar is not None:
            self._bar.update(1)
        self._pending[result.index] = result
        while self._next in self._pending:
            self._write(self._pending.pop(self._next))
            self._next += 1

    def _write(self, result: FileTranscript) -> None:
        if result.error is not None:
            return
        if self.fmt == "tsv" and any(c in result.path for c in "\t\r\n"):
            self.error(result.path, "the path contains a tab or line break and cannot be written as TSV; "
                                    "use --format json")
            return
        for ch in result.channels:
            if self.fmt == "tsv":
                line = f"{result.channel_id(ch.channel)}\t{ch.text}"
            else:
                line = json.dumps({"id": result.channel_id(ch.channel), "path": result.path,
                                   "channel": ch.channel, "text": ch.text,
                                   "utterances": [utterance_json(u) for u in ch.utterances]},
                                  ensure_ascii=False)
            print(line, file=self.out, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


# --------------------------------------------------------------------------------------- transcribe CLI


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def parse_hotword(text: str) -> tuple[str, float]:
    """``PHRASE[:BOOST]`` -> (phrase, boost). A suffix after the last ``:`` that is not a number belongs to
    the phrase ("re:invent"); without a boost the default one applies.

    Raises:
        ValueError: an empty phrase, or a boost that is not positive and finite.
    """
    phrase, boost = text, DEFAULT_HOTWORD_BOOST
    head, sep, tail = text.rpartition(":")
    if sep:
        try:
            boost = float(tail)
        except ValueError:
            pass
        else:
            phrase = head
    phrase = phrase.strip()
    if not phrase or any(c in phrase for c in "\t\r\n"):
        raise ValueError(f"expected PHRASE[:BOOST] with a non-empty phrase without tabs, got {text!r}")
    if not math.isfinite(boost) or boost <= 0:
        raise ValueError(f"expected a positive finite boost in {text!r}, got {boost}")
    return phrase, boost


def _hotwords(args: argparse.Namespace) -> tuple[Hotword, ...]:
    """The hotwords file first, then the flags; a repeated phrase keeps the last boost given."""
    from_file = load_hotwords_file(Path(args.hotwords_file)) if args.hotwords_file is not None else ()
    return merge_hotwords(from_file, (Hotword(*parse_hotword(item)) for item in args.hotword))


def add_transcribe_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``xlgate transcribe`` flags; sets ``func`` to :func:`cmd_transcribe`."""
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="audio files (WAV, FLAC, OGG, MP3, ...; headerless .ul/.al/.raw by extension)")
    parser.add_argument("--format", choices=("tsv", "json"), default="tsv",
                        help="tsv: 'path<TAB>text' a line ('path#N' per channel of a multi-channel file); "
                             "json: one object a line with utterances, word times and confidences "
                             "(default tsv)")
    parser.add_argument("--model", default=BUNDLED_MODEL, metavar="PATH",
                        help=f"a .safetensors checkpoint, or {BUNDLED_MODEL!r} (default)")
    parser.add_argument("--raw-encoding", choices=RAW_ENCODINGS, default=None,
                        help="decode every file as headerless audio in this encoding, whatever its extension")
    parser.add_argument("--raw-sample-rate-hz", type=positive_int, default=8000, metavar="N",
                        help="sample rate of headerless files (default 8000)")
    parser.add_argument("--raw-channels", type=positive_int, default=1, metavar="N",
                        help="interleaved channels of headerless files (default 1)")
    parser.add_argument("--hotword", action="append", default=[], metavar="PHRASE[:BOOST]",
                        help="favour a phrase (repeatable; boost defaults to the serve default)")
    parser.add_argument("--hotwords-file", default=None, metavar="F",
                        help="hotwords, one 'phrase[<TAB>boost]' a line; --hotword flags win on repeats")
    parser.add_argument("--max-parallel", type=positive_int, default=DEFAULT_MAX_PARALLEL, metavar="N",
                        help=f"streams (channels) recognised at once, batched together "
                             f"(default {DEFAULT_MAX_PARALLEL})")
    add_option_arguments(parser, ("device", "decoding", "beam_size", "endpoint_silence_ms", "final_pass"))
    parser.set_defaults(func=cmd_transcribe)


def cmd_transcribe(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run ``xlgate transcribe``. Returns 0, 1 when any file failed, 2 for a bad model or settings."""
    from gateway.logging import configure_logging
    from gateway.models import load_model
    from gateway.session import DecodingSettings, EndpointingSettings, StreamSettings
    from streaming_model.checkpoint import CheckpointError

    configure_logging(level="warning", fmt="text")
    try:
        hotwords = _hotwords(args)
    except (ValueError, ConfigError) as exc:
        parser.error(str(exc))
    settings = StreamSettings(
        endpointing=EndpointingSettings(silence_s=args.endpoint_silence_ms / 1000),
        decoding=DecodingSettings(method=args.decoding, beam_size=args.beam_size, hotwords=hotwords),
        interim_results=False)
    read_options = ReadOptions(raw_encoding=args.raw_encoding, raw_sample_rate_hz=args.raw_sample_rate_hz,
                               raw_channels=args.raw_channels)
    try:
        loaded = load_model(args.model, args.device)
    except (CheckpointError, OSError, RuntimeError, ValueError) as exc:
        print(f"xlgate transcribe: error: cannot load model {args.model!r} on {args.device}: {exc}",
              file=sys.stderr)
        return 2
    reporter = _Reporter(fmt=args.format, total=len(args.files), out=sys.stdout, err=sys.stderr)
    try:
        run_async(run_transcription(loaded, args.files, settings=settings, read_options=read_options,
                                    max_parallel=args.max_parallel, device=args.device, on_result=reporter,
                                    final_pass=args.final_pass))
    except KeyboardInterrupt:
        reporter.close()
        print("xlgate transcribe: interrupted", file=sys.stderr)
        return 130
    reporter.close()
    return 1 if reporter.failed else 0


# ---------------------------------------------------------------------------------------------- scoring


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def format_report(report: IdReport, *, refs_path: str, hyps_path: str) -> str:
    """The human-readable table ``xlgate eval score`` prints."""
    lines = [f"references: {refs_path}", f"hypotheses: {hyps_path}", ""]
    header = f"{'subset':<24} {'utts':>7} {'words':>8} {'WER':>8} {'CER':>8} {'sub':>7} {'del':>7} {'ins':>7}"
    lines += [header, "-" * len(header)]
    rows = [*sorted(report.subsets.items()), ("ALL", report.overall)]
    for name, c in rows:
        lines.append(f"{name:<24} {c.utterances:>7} {c.ref_words:>8} {_rate(c.wer):>8} {_rate(c.cer):>8} "
                     f"{c.substitutions:>7} {c.deletions:>7} {c.insertions:>7}")
    if report.missing_ids:
        lines += ["", f"missing from hypotheses ({len(report.missing_ids)}, scored as all deletions):",
                  *(f"  {i}" for i in report.missing_ids)]
    if report.extra_ids:
        lines += ["", f"in hypotheses but not in references ({len(report.extra_ids)}, ignored):",
                  *(f"  {i}" for i in report.extra_ids)]
    return "\n".join(lines)


def add_score_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``xlgate eval score`` flags; sets ``func`` to :func:`cmd_score`."""
    parser.add_argument("--refs", required=True, metavar="REFS.tsv", help="references, 'id<TAB>text' a line")
    parser.add_argument("hyps", metavar="HYPS.tsv", help="hypotheses, 'id<TAB>text' a line "
                                                         "(e.g. the output of xlgate transcribe)")
    parser.add_argument("--json", default=None, metavar="OUT", help="also write the scores as JSON to OUT")
    parser.set_defaults(func=cmd_score)


def cmd_score(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run ``xlgate eval score``. Returns 0, or 2 when an input is unreadable or malformed."""
    try:
        refs = read_transcripts_tsv(args.refs)
        hyps = read_transcripts_tsv(args.hyps)
    except TsvError as exc:
        print(f"xlgate eval score: error: {exc}", file=sys.stderr)
        return 2
    report = score_by_id(refs, hyps)
    print(format_report(report, refs_path=args.refs, hyps_path=args.hyps))
    if report.missing_ids:
        print(f"xlgate eval score: warning: {len(report.missing_ids)} reference ids have no hypothesis",
              file=sys.stderr)
    if args.json is not None:
        data = {"refs": args.refs, "hyps": args.hyps, **report.to_json()}
        try:
            Path(args.json).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        except OSError as exc:
            print(f"xlgate eval score: error: cannot write {args.json}: {exc}", file=sys.stderr)
            return 2
    return 0


