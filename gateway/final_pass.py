"""Finals from a second pass (``final_pass = whisper``): Whisper tiny.en re-decodes each utterance on a worker
thread of the model runner, while partials keep coming from the CTC head every step.

Theory of operation. When a step closes an utterance (endpoint, finalize or end of audio), the runner hands
:meth:`SecondPassFinals.submit` a :class:`FinalJob`: the utterance's Whisper log-mels, its CTC log-probs, the
stream's hotwords and the CTC final. One worker thread runs :class:`streaming_model.second_pass.WhisperSecondPass`
on it (ctranslate2 releases the GIL and runs on one intra thread, so the step loop keeps its pace), then aligns
the text to the CTC log-probs (:func:`streaming_model.second_pass.align_words`) for word timings and
confidences. The runner takes finished finals with :meth:`SecondPassFinals.collect` and returns them to the
engine as :class:`LateFinal`.

Ordering: each stream's finals wait in a FIFO; only the head of a stream's FIFO is handed out, so a stream's
finals leave in the order of their utterances. :meth:`SecondPassFinals.has_pending` is what the runner asks
before sending a partial: while a stream has a final not yet handed out, its partials (and the start of its
next utterance) are held back (dropped: a later partial carries the whole utterance so far).

Bounds and fallbacks (overload sheds quality, never latency): at most ``max_pending`` second passes are
queued or running, and each close has ``budget_s`` from its submission for its second pass: the worker does
not start one that cannot finish within what is left (by the recent run times), and a final whose second
pass is still running when its budget is spent goes out with its CTC text (the run's result is dropped). Either way the utterance keeps its CTC final (in its place in the stream's FIFO), as does an
utterance longer than Whisper's 30 s window, an utterance whose second pass fails, and one whose second
pass finds no words; each final says where its text came from (:class:`FinalSource`). Finals of a stream
that was aborted are still handed out (the runner does not know streams, only slots); the engine drops them.

Priority: the worker thread runs at a lower CPU priority (``nice``) than the model step, and ctranslate2's
own threads, created from it, inherit that priority (Linux niceness is per thread): partials keep their pace
and second passes use the CPU the streaming step leaves.

Confidences: a word's raw confidence is the lowest of its characters' peak posteriors on the forced CTC path,
the statistic of the CTC decoders' word confidences, so the checkpoint's calibration map applies unchanged.

Dimension legend: T mel frames (10 ms), F CTC frames, V CTC vocabulary.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, replace

import numpy as np

from gateway.session import FinalSource
from streaming_model.decoding import ConfidenceCalibration, Hypothesis, Word, utterance_confidence
from streaming_model.second_pass import WhisperSecondPass, align_words
from streaming_model.tokenizer import CharTokenizer

log = logging.getLogger("xlgate.final_pass")

__all__ = ["FinalJob", "FinalSource", "LateFinal", "SecondPassFinals"]

# CPU priority of the second pass's threads (Linux niceness, 0 .. 19): below the model step's.
SECOND_PASS_NICE = 10
INITIAL_RUN_S = 0.15  # a second pass's expected wall time before any was measured
RUN_S_SMOOTHING = 0.2  # weight of the newest run in the moving average
# Whisper's text must be backed by the CTC's: at least MIN_CTC_LETTERS CTC letters, and at most
# max(CTC letters + LETTER_SLACK, MAX_LETTER_RATIO x CTC letters) Whisper letters. Over hold music the CTC
# hears a letter or three and Whisper writes "thank you", "i'm so sorry" or "i'm gonna go back to the end of
# the video"; over the first 40 dev utterances the Whisper text had at most ~2x the CTC's letters.
MIN_CTC_LETTERS = 2
LETTER_SLACK = 2
MAX_LETTER_RATIO = 2.5


def backed_by_ctc(whisper_text: str, ctc_text: str) -> bool:
    """Whether a second-pass text is long as far as the CTC's text of the same utterance allows (letters
    only: spaces and apostrophes do not count)."""
    ctc_letters = sum(c.isalpha() for c in ctc_text)
    whisper_letters = sum(c.isalpha() for c in whisper_text)
    allowed = max(ctc_letters + LETTER_SLACK, MAX_LETTER_RATIO * ctc_letters)
    return ctc_letters >= MIN_CTC_LETTERS and whisper_letters <= allowed


@dataclass(frozen=True, slots=True)
class FinalJob:
    """One closed utterance for the second pass."""

    stream_id: int
    mels: np.ndarray  # (T, 80) Whisper log-mels of the utterance
    log_probs: np.ndarray  # (F, V) CTC log-probs of the same utterance
    start_s: float  # stream time of the utterance's first CTC frame
    hotwords: tuple[str, ...]
    ctc_final: Hypothesis  # calibrated; the final when the second pass cannot give one
    speech_started_s: float | None  # the utterance's start, when no SpeechStarted was sent for it yet
    audio_end_s: float
    arrival_s: float
    use_second_pass: bool = True  # False: the CTC final stands (utterance over Whisper's window)


@dataclass(frozen=True, slots=True)
class LateFinal:
    """A final finished after the step that closed its utterance (that step's output said
    ``final_pending``), with the events that belong after it."""

    stream_id: int
    final: Hypothesis
    speech_started_s: float | None  # to announce before the final (its partials were held back)
    speech_ended_s: float
    audio_end_s: float  # how far into the stream's audio the stream was when the utterance closed
    arrival_s: float  # when the audio that closed it arrived (final latency counts from there)
    source: FinalSource = FinalSource.SECOND_PASS


@dataclass(slots=True)
class _Entry:
    job: FinalJob
    future: concurrent.futures.Future[tuple[Hypothesis, FinalSource]] | None  # None: the CTC final stands
    source: FinalSource  # why the CTC final stands, when future is None
    submitted_s: float  # time.monotonic() at submission: the budget counts from here


class SecondPassFinals:
    """Runs second passes on one worker thread and hands their finals out in per-stream order.

    Used by the one thread that runs the model runner; only the second pass itself runs on the worker.
    """

    def __init__(self, *, frame_s: float, calibration: ConfidenceCalibration, max_pending: int,
                 budget_s: float, tokenizer: CharTokenizer | None = None,
                 second_pass: WhisperSecondPass | None = None, nice: int = SECOND_PASS_NICE) -> None:
        """Start the worker and load Whisper on it (unless ``second_pass`` is given).

        Args:
            frame_s: seconds per CTC frame.
            calibration: the runner's confidence map of CTC finals.
            max_pending: second passes queued or running at once; more closes keep their CTC finals.
            budget_s: how long after its close a final may wait for its second pass (queue and run); then it
                keeps its CTC text.
            tokenizer: the CTC vocabulary (default :class:`CharTokenizer`).
            second_pass: the decoder (default: tiny.en int8 on one thread, loaded on the worker so that
                ctranslate2's threads inherit its priority).
            nice: how much lower the worker's CPU priority is than the caller's (Linux niceness; 0 = same).
        """
        if max_pending < 1:
            raise ValueError(f"max_pending: expected >= 1, got {max_pending}")
        if budget_s < 0:
            raise ValueError(f"budget_s: expected >= 0, got {budget_s}")
        self.frame_s = frame_s
        self.calibration = calibration
        self.max_pending = max_pending
        self.budget_s = budget_s
        self.run_s = INITIAL_RUN_S  # moving average of a second pass's wall time (written by the worker)
        self._abandoned: list[concurrent.futures.Future[tuple[Hypothesis, FinalSource]]] = []
        self.tokenizer = tokenizer if tokenizer is not None else CharTokenizer()
        # The worker's queue, oldest first: only entries not yet started. A shed entry leaves it at once with
        # its audio (a pool executor's queue would keep a cancelled job, log-mels and all, until its worker came
        # to it: under overload, every shed utterance's). Not measured apart: the soak's growth was ctranslate2's
        # oneDNN cache (streaming_model.second_pass.ENCODER_BUCKET_S).
        self._queue: deque[_Entry] = deque()
        self._cv = threading.Condition()
        self._closed = False
        loaded: concurrent.futures.Future[WhisperSecondPass] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._work, args=(nice, second_pass, loaded), name="xlgate-final",
                                        daemon=True)
        self._thread.start()
        self.second_pass: WhisperSecondPass = loaded.result()
        self._streams: dict[int, deque[_Entry]] = {}
        self._running = 0  # entries with a future not yet handed out
        self.overflows = 0  # closes that kept their CTC final because max_pending were pending

    def has_pending(self, stream_id: int) -> bool:
        """Whether a final of the stream is waiting to be handed out."""
        return stream_id in self._streams

    def submit(self, job: FinalJob) -> None:
        """Queue a closed utterance; never blocks (over ``max_pending``, its CTC final stands)."""
        future: concurrent.futures.Future[tuple[Hypothesis, FinalSource]] | None = None
        source = FinalSource.TOO_LONG
        now_s = time.monotonic()
        self._reap_abandoned()
        if job.use_second_pass and self._running < self.max_pending:
            future = concurrent.futures.Future()
            self._running += 1
        elif job.use_second_pass:
            source = FinalSource.SHED_PENDING
            self.overflows += 1
            if self.overflows % 100 == 1:
                log.warning("second pass overloaded (%d pending): %d finals so far keep their CTC text",
                            self._running, self.overflows)
        entry = _Entry(job, future, source, now_s)
        self._streams.setdefault(job.stream_id, deque()).append(entry)
        if future is not None:
            with self._cv:
                self._queue.append(entry)
                self._cv.notify()

    def queued(self) -> int:
        """Second passes waiting for the worker (not counting the one it runs)."""
        with self._cv:
            return len(self._queue)

    def collect(self, wait_s: float = 0.0) -> list[LateFinal]:
        """The finals ready to go out, each stream's in order; waits up to ``wait_s`` for a first one when
        none is ready."""
        heads = [q[0].future for q in self._streams.values() if q[0].future is not None]
        if wait_s > 0 and heads and len(heads) == len(self._streams) and not any(f.done() for f in heads):
            concurrent.futures.wait(heads, timeout=wait_s, return_when=concurrent.futures.FIRST_COMPLETED)
        out: list[LateFinal] = []
        now_s = time.monotonic()
        for stream_id in list(self._streams):
            queue = self._streams[stream_id]
            while queue and (queue[0].future is None or queue[0].future.done()
                             or now_s - queue[0].submitted_s > self.budget_s):
                out.append(self._late(queue.popleft()))
            if not queue:
                del self._streams[stream_id]
        self._reap_abandoned()
        return out

    def _reap_abandoned(self) -> None:
        """Forget abandoned second passes that have finished (they count as running until then)."""
        done = [f for f in self._abandoned if f.done()]
        if done:
            self._abandoned = [f for f in self._abandoned if not f.done()]
            self._running -= len(done)

    def _late(self, entry: _Entry) -> LateFinal:
        job, final, source = entry.job, entry.job.ctc_final, entry.source
        if entry.future is not None and not entry.future.done():
            # its budget is spent: the CTC final goes out now, the run's result will be dropped
            with self._cv:
                cancelled = entry.future.cancel()
                if cancelled:
                    self._queue.remove(entry)
            if cancelled:
                self._running -= 1
            else:
                self._abandoned.append(entry.future)
            source = FinalSource.SHED_LATE
        elif entry.future is not None:
            self._running -= 1
            try:
                final, source = entry.future.result()
            except Exception:
                log.exception("stream %d: second pass failed; the final keeps the CTC text", job.stream_id)
                source = FinalSource.FAILED
        return LateFinal(stream_id=job.stream_id, final=final, speech_started_s=job.speech_started_s,
                         speech_ended_s=final.end_s, audio_end_s=job.audio_end_s, arrival_s=job.arrival_s,
                         source=source)

    def _transcribe(self, job: FinalJob, submitted_s: float) -> tuple[Hypothesis, FinalSource]:
        """The worker's part: Whisper's text, aligned to the CTC log-probs (the CTC final when too little of
        its budget is left to run, Whisper finds no words, or its text is not backed by the CTC's: :func:`backed_by_ctc`). The
        final keeps the CTC final's phrase scores (closed-set grammars are scored on the CTC posteriors,
        whatever the text)."""
        started_s = time.monotonic()
        if started_s - submitted_s + self.run_s > self.budget_s:
            # decay towards the start value, so that after a slow spell a pass is tried again (and measured)
            self.run_s += RUN_S_SMOOTHING * (INITIAL_RUN_S - self.run_s)
            return job.ctc_final, FinalSource.SHED_WAIT
        text = self.second_pass.transcribe(job.mels, hotwords=job.hotwords).text
        self.run_s += RUN_S_SMOOTHING * (time.monotonic() - started_s - self.run_s)
        if not text.strip():
            return job.ctc_final, FinalSource.NO_WORDS
        if not backed_by_ctc(text, job.ctc_final.text):
            return job.ctc_final, FinalSource.UNBACKED
        aligned = align_words(job.log_probs, text, tokenizer=self.tokenizer, reduction="min")
        words = tuple(Word(a.word, job.start_s + a.start_frame * self.frame_s,
                           job.start_s + a.end_frame * self.frame_s, self.calibration.word(a.confidence))
                      for a in aligned)
        final = replace(job.ctc_final, text=" ".join(w.text for w in words), words=words,
                        confidence=utterance_confidence(words), start_s=words[0].start_s, end_s=words[-1].end_s)
        return final, FinalSource.SECOND_PASS

    def _work(self, nice: int, second_pass: WhisperSecondPass | None,
              loaded: concurrent.futures.Future[WhisperSecondPass]) -> None:
        """The worker thread: lower its priority, load Whisper here (ctranslate2's threads inherit the
        priority), then run the queue's second passes oldest first until :meth:`close`."""
        _lower_priority(nice)
        try:
            loaded.set_result(second_pass if second_pass is not None else WhisperSecondPass(intra_threads=1))
        except BaseException as exc:  # the constructor re-raises it
            loaded.set_exception(exc)
            return
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                entry = self._queue.popleft()
                future = entry.future
                assert future is not None
                if not future.set_running_or_notify_cancel():
                    continue
            try:
                future.set_result(self._transcribe(entry.job, entry.submitted_s))
            except Exception as exc:
                future.set_exception(exc)

    def close(self) -> None:
        """Stop the worker once its running pass (if any) ends; queued second passes are cancelled (their
        finals are not handed out)."""
        with self._cv:
            self._closed = True
            for entry in self._queue:
                assert entry.future is not None
                entry.future.cancel()
            self._queue.clear()
            self._cv.notify()
        self._thread.join()
        self._streams.clear()
        self._running = 0


def _lower_priority(nice: int) -> None:
    """Worker initializer: lower this thread's CPU priority by ``nice`` (Linux: per thread; threads it
    creates inherit it). Where that is not possible the worker keeps the caller's priority."""
    if nice <= 0:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + nice)
    except (OSError, AttributeError) as exc:  # not Linux, or not permitted
        log.info("second pass runs at normal priority: %s", exc)
