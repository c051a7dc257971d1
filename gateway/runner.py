"""The model runner: executes one batched step (features, encoder, decoding, endpointing) off the event loop.

:class:`ModelRunner` is the synchronous core. Everything it touches (the state store, the per-stream
decoders) belongs to the one thread that calls it: the event loop only hands it immutable inputs and
receives immutable outputs. The engine drives it through an :class:`AsyncRunner`:

* :class:`ThreadRunner` runs it on a dedicated thread of this process;
* :class:`ProcessRunner` runs it in a child process, so the model's hundreds of small torch calls per step
  never wait for the event loop's GIL (measured on the 2-core machine: a busy Python thread beside the
  model thread made each step 2.5-3x slower; see docs/benchmarks.md). This is the default on CPU.

With ``final_pass = whisper`` a closed utterance's final comes from a second pass on a worker thread of the
runner (:mod:`gateway.final_pass`): the step that closes it says ``final_pending``, and the final comes out
later from :meth:`ModelRunner.collect_finals` as a :class:`LateFinal`. While a stream has a final not yet
collected, its partials and the start of its next utterance are held back (dropped; the next partial after
the final carries the whole utterance so far), so nothing of the next utterance overtakes it.

A GPU runner keeps the same interface and swaps the state store for a device-resident one.

Dimension legend: B streams in the step, N samples, T frames, V vocabulary.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from typing import Any, Protocol

import numpy as np
import torch

from gateway.config import FinalPass, Quantization, RelAttention
from gateway.final_pass import FinalJob, LateFinal, SecondPassFinals
from gateway.scheduler import ItemKind, NewStream, StepPlan, WorkItem
from gateway.session import DecodingMethod, DecodingSettings, EndpointingSettings, Hotword, StreamSettings
from streaming_model.checkpoint import LoadedModel
from streaming_model.decoding import (
    ConfidenceCalibration,
    GreedyDecoder,
    Hypothesis,
    StreamDecoder,
    endpoint_reached,
)
from streaming_model.features import Fbank, FbankConfig, whisper_features
from streaming_model.model import StateStore
from streaming_model.phrase_scoring import phrase_confidences
from streaming_model.tokenizer import CharTokenizer

log = logging.getLogger("xlgate.runner")


@dataclass(frozen=True, slots=True)
class ChunkInput:
    """The runner's input for one stream in one step (``WorkItem.payload``); the stream's slot is the
    plan's, and its settings came with the plan that announced it (``StepPlan.new_streams``)."""

    window: np.ndarray | None  # float32 samples with left context; None for a control item
    num_frames: int  # real feature frames in the window (0 .. chunk + look-ahead)
    audio_end_s: float  # how far into the stream's audio the stream is after this item


@dataclass(slots=True)
class _Utterance:
    """The current utterance's step outputs since the last final, one entry per step: CTC log-probs (kept
    when closed-set phrases are scored or a second pass aligns to them) and Whisper log-mels (second pass
    only). The one buffer both users read; bounded (see :meth:`ModelRunner._keep`)."""

    log_probs: list[np.ndarray] = field(default_factory=list)  # (f_i, V) each
    mels: list[np.ndarray] = field(default_factory=list)  # (t_i, 80) each, in step with log_probs
    start_frame: int = 0  # the stream's CTC frame where the first kept entry begins
    num_mel_frames: int = 0
    too_long: bool = False  # outgrew Whisper's window: its mels are dropped, its CTC final stands

    def drop_leading(self, keep: int) -> None:
        """Keep only the last ``keep`` steps (leading silence: only blanks to score or align)."""
        dropped = self.log_probs[:-keep]
        if not dropped:
            return
        self.start_frame += sum(d.shape[0] for d in dropped)
        del self.log_probs[:-keep]
        if self.mels:
            self.num_mel_frames -= sum(m.shape[0] for m in self.mels[:-keep])
            del self.mels[:-keep]


@dataclass(slots=True)
class _SlotState:
    """What the runner keeps per live slot besides the model state: from the plan that announced the
    stream until the plan that frees its slot."""

    decoder: StreamDecoder
    endpointing: EndpointingSettings
    last_partial: str = ""
    phrases: tuple[tuple[str, list[int]], ...] = ()  # closed-set phrases and their token ids
    hotwords: tuple[str, ...] = ()
    utterance: _Utterance = field(default_factory=_Utterance)
    frames_seen: int = 0  # CTC frames of the stream so far


@dataclass(frozen=True, slots=True)
class StreamOutput:
    """What one step produced for one stream."""

    stream_id: int
    partial: Hypothesis | None  # the current utterance's hypothesis when it changed
    finals: tuple[Hypothesis, ...]
    speech_started_s: float | None
    speech_ended_s: float | None
    audio_end_s: float
    final_pending: bool = False  # the closed utterance's final will come as a LateFinal


DecoderFactory = Callable[[DecodingSettings], StreamDecoder]
MAX_CACHED_GRAPHS = 256
MAX_SCORED_PHRASES = 256  # closed-set phrases scored per final (CTC forward, a few ms each)
MAX_LEADING_CHUNKS = 16  # steps of an utterance kept while no speech has been heard
MAX_SECOND_PASS_MEL_FRAMES = 3000  # Whisper's 30 s window at 10 ms
# Second passes queued or running at once; a close beyond them keeps its CTC final (overload sheds quality,
# not latency; the time budget, final_pass_budget, sheds the rest)
MAX_PENDING_SECOND_PASSES = 8


@dataclass(frozen=True, slots=True)
class LanguageModel:
    """The word n-gram LM used by beam search, with the fusion weights tuned for it."""

    model: Any  # streaming_model.ngram.NgramLM, or None for no LM
    weight: float = 0.5
    word_bonus: float = 1.0

    @classmethod
    def load(cls, spec: str) -> LanguageModel:
        """``bundled`` (the shipped LM, if this build has one), ``none``, or a path to an .npz/.arpa LM.

        Tuned weights are read from a JSON file beside it (``lm.json``: lm_weight, word_insertion_bonus).
        """
        import json
        from pathlib import Path

        from streaming_model.ngram import NgramLM

        if spec == "none":
            return cls(None)
        if spec == "bundled":
            from importlib import resources

            path = Path(str(resources.files("streaming_model").joinpath("assets", "lm-en.npz")))
            if not path.is_file():
                return cls(None)
        else:
            path = Path(spec)
            if not path.is_file():
                raise FileNotFoundError(f"language model {path} does not exist")
        tuning = path.with_suffix(".json")
        weights = json.loads(tuning.read_text()) if tuning.is_file() else {}
        return cls(NgramLM.load(path), float(weights.get("lm_weight", 0.5)),
                   float(weights.get("word_insertion_bonus", 1.0)))


def quantize_int8(model: torch.nn.Module) -> Any:
    """Dynamic int8 quantisation of every Linear layer (weights int8, activations quantised per step).

    On the 2-core CPU it made a 16-stream step ~1.7x faster; its accuracy cost is measured on the dev set
    (docs/model.md). Activations are quantised with one scale per step, so a stream's output depends a
    little on the other streams in its batch (float32 does not): that is why it is not the default.
    torch.ao's eager API is deprecated in favour of torchao, which is not a dependency.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
            model, {torch.nn.Linear}, dtype=torch.qint8)


@dataclass(frozen=True, slots=True)
class RunnerInfo:
    """What the engine and sessions need to know about the model behind a runner."""

    features: FbankConfig
    chunk_frames: int  # feature frames a step advances a stream by
    max_streams: int
    description: str
    trained: bool
    model_path: str
    dev_wer: float | None = None  # the checkpoint's dev-set WER, when its trainer recorded one
    lookahead_frames: int = 0  # feature frames after the chunk that a step's window also carries
    warmup: WarmUp | None = None  # what the warm-up did (None: none ran)


@dataclass(frozen=True, slots=True)
class WarmUp:
    """What :meth:`ModelRunner.warm_up` did."""

    batch_sizes: int  # batch sizes stepped: 1 .. batch_sizes
    target_batch_sizes: int  # the largest batch the scheduler can form
    seconds: float

    @property
    def complete(self) -> bool:
        return self.batch_sizes == self.target_batch_sizes


WARMUP_AMPLITUDE = 0.1  # synthetic warm-up audio: noise at about -20 dBFS, so the decoders have frames to chew


def freeze_heap() -> None:
    """Collect once, then move every object alive now (imports, the model, start-up caches) into the
    garbage collector's permanent generation.

    Why: a full (generation 2) collection traverses every object in the process; with torch loaded that
    is hundreds of thousands, tens of milliseconds of CPU (measured 34-130 ms here, 300 ms wall on the
    loaded 2-core machine). After start-up, the objects a first session creates trip the full-collection
    threshold once, so that pause landed in the first session after every start (docs/reliability.md).
    Frozen objects are never traversed again; a full collection then scans only what came later.
    """
    gc.collect()
    gc.freeze()


class ModelRunner:
    """Runs steps for up to ``max_streams`` concurrent streams on one device.

    Slot numbers (0 .. max_streams-1) are handed out by the scheduler; each plan says which slots were
    freed (their decoders are dropped) and which new streams took one (its state is reset, its decoder
    created). The runner never decides about slots itself.
    """

    def __init__(self, loaded: LoadedModel, *, max_streams: int, device: str = "cpu",
                 compute_dtype: torch.dtype = torch.float32, num_threads: int | None = None,
                 quantize: Quantization | str = Quantization.NONE, lm: LanguageModel | None = None,
                 decoder_factory: DecoderFactory | None = None,
                 rel_attention: RelAttention | str = RelAttention.AUTO,
                 final_pass: FinalPass | str = FinalPass.NONE, final_pass_budget_s: float = 0.3,
                 final_pass_max_pending: int = MAX_PENDING_SECOND_PASSES) -> None:
        self.loaded = loaded
        self.config = loaded.model.config
        self.device = torch.device(device)
        self.compute_dtype = compute_dtype
        self.num_threads = num_threads
        self.model = loaded.model.to(self.device).eval()
        self.model.attention_backend = RelAttention(rel_attention).value
        if quantize not in tuple(Quantization):
            raise ValueError(f"quantize: expected one of {', '.join(Quantization)}, got {quantize!r}")
        self.quantize = Quantization(quantize)
        if self.quantize is Quantization.INT8:
            self.model = quantize_int8(self.model)
        self.fbank = Fbank(loaded.features).to(self.device)
        self.store = StateStore(self.config, max_streams, device=self.device)
        self.frame_s = self.config.subsampling * loaded.features.hop_samples / loaded.features.sample_rate_hz
        self._slots: dict[int, _SlotState] = {}
        self._decoder_factory = decoder_factory or self._default_decoder
        self.calibration = ConfidenceCalibration.from_info(loaded.info)  # validated by load_checkpoint
        self.lm = lm or LanguageModel(None)
        self._graphs: dict[tuple[Hotword, ...], Any] = {}
        self._thread: int | None = None
        self.warmup: WarmUp | None = None
        self.chunk_frames = self.config.chunk_feature_frames
        self.window_frames = self.config.step_feature_frames  # the chunk and its look-ahead
        self.window_samples = loaded.features.context_samples + self.window_frames * loaded.features.hop_samples
        self.final_pass = FinalPass(final_pass)
        self.finals: SecondPassFinals | None = None
        self._whisper_fbank: Fbank | None = None
        if self.final_pass is FinalPass.WHISPER:
            self._whisper_fbank = self._whisper_frontend(loaded.features)
            tokenizer = loaded.tokenizer
            if not isinstance(tokenizer, CharTokenizer):
                raise ValueError(f"final_pass whisper aligns characters; the model's tokenizer is "
                                 f"{type(tokenizer).__name__} (serve it with final_pass none)")
            self.finals = SecondPassFinals(frame_s=self.frame_s, calibration=self.calibration,
                                           max_pending=final_pass_max_pending,
                                           budget_s=final_pass_budget_s, tokenizer=tokenizer)

    def _whisper_frontend(self, features: FbankConfig) -> Fbank | None:
        """The Fbank that turns a step's windows into Whisper log-mels (None: the model's features are)."""
        if features.style == "whisper":
            return None
        whisper = whisper_features()
        if (features.sample_rate_hz, features.hop_samples, features.context_samples) != (
                whisper.sample_rate_hz, whisper.hop_samples, whisper.context_samples):
            raise ValueError(f"final_pass whisper needs windows Whisper's log-mels can be computed from: "
                             f"{whisper.sample_rate_hz} Hz, hop {whisper.hop_samples}, context "
                             f"{whisper.context_samples}; the model has {features.sample_rate_hz} Hz, hop "
                             f"{features.hop_samples}, context {features.context_samples} (serve it with final_pass none)")
        return Fbank(whisper).to(self.device)

    @property
    def info(self) -> RunnerInfo:
        c = self.config
        return RunnerInfo(
            features=self.loaded.features, chunk_frames=self.chunk_frames, max_streams=self.store.max_slots,
            description=(f"{self.loaded.path}: {self.loaded.model.num_parameters() / 1e6:.2f}M parameters, "
                         f"{self.quantize}, final pass {self.final_pass}, chunk "
                         f"{c.chunk_ms} ms, look-ahead {c.right_ms} ms, memory {c.mem_ms} ms, {c.n_layers} "
                         f"layers, vocab {c.vocab_size}, device {self.device}"),
            trained=self.loaded.trained, model_path=self.loaded.path,
            lookahead_frames=self.window_frames - self.chunk_frames, warmup=self.warmup,
            dev_wer=float(wer) if isinstance(wer := self.loaded.info.get("dev_wer"), int | float) else None)

    def _default_decoder(self, decoding: DecodingSettings) -> StreamDecoder:
        from streaming_model.beam import BeamConfig, BeamDecoder

        tokenizer = self.loaded.tokenizer
        beam = decoding.method is DecodingMethod.BEAM
        if not beam and not decoding.hotwords:
            return GreedyDecoder(tokenizer, frame_s=self.frame_s)
        # Hotwords need a search to act on, so greedy with hotwords runs a small beam (without the LM).
        config = BeamConfig(beam_size=decoding.beam_size if beam else 4, lm_weight=self.lm.weight,
                            word_insertion_bonus=self.lm.word_bonus)
        return BeamDecoder(tokenizer, config, frame_s=self.frame_s,
                           context=self._context_graph(decoding.hotwords), lm=self.lm.model if beam else None)

    def _context_graph(self, hotwords: tuple[Hotword, ...]) -> Any:
        """The hotword graph of a list, built once per distinct list (server defaults repeat a lot)."""
        if not hotwords:
            return None
        graph = self._graphs.get(hotwords)
        if graph is None:
            from streaming_model.context_graph import ContextGraph

            if len(self._graphs) >= MAX_CACHED_GRAPHS:
                self._graphs.pop(next(iter(self._graphs)))
            graph = self._graphs[hotwords] = ContextGraph.from_text(hotwords, self.loaded.tokenizer)
        return graph

    def _encode_phrases(self, phrases: tuple[str, ...]) -> tuple[tuple[str, list[int]], ...]:
        """Token ids of each phrase; a phrase the tokenizer cannot spell is left out (it scores nothing)."""
        out = []
        for phrase in phrases[:MAX_SCORED_PHRASES]:
            try:
                tokens = self.loaded.tokenizer.encode(phrase)
            except (KeyError, ValueError):
                continue
            if tokens:
                out.append((phrase, tokens))
        return tuple(out)

    def _utterance_log_probs(self, utterance: _Utterance) -> np.ndarray:
        """The utterance's CTC log-probs (F, V)."""
        if not utterance.log_probs:
            return np.zeros((0, self.config.vocab_size), dtype=np.float32)
        return np.concatenate(utterance.log_probs)

    @staticmethod
    def _score_phrases(state: _SlotState, log_probs: np.ndarray) -> tuple[tuple[str, float], ...]:
        """The utterance's phrase confidences from its CTC log-probs (F, V)."""
        scores = phrase_confidences(log_probs, [tokens for _, tokens in state.phrases])
        return tuple((phrase, round(score, 4)) for (phrase, _), score in zip(state.phrases, scores, strict=True))

    def _check_thread(self) -> None:
        ident = threading.get_ident()
        if self._thread is None:
            self._thread = ident
            if self.num_threads:
                torch.set_num_threads(self.num_threads)  # OpenMP settings are per thread
        assert self._thread == ident, "ModelRunner used from two threads"

    @torch.inference_mode()
    def run_step(self, plan: StepPlan) -> list[StreamOutput]:
        """Execute one step: apply the plan's freed and new slots, then its items (:class:`ChunkInput`
        payloads, one per stream). Returns one output per item, in order."""
        self._check_thread()
        for slot in plan.freed_slots:
            self._slots.pop(slot, None)
        if plan.new_streams:
            self._admit(plan.new_streams)
        inputs: list[ChunkInput] = [i.payload for i in plan.items]
        audio_rows = [b for b, inp in enumerate(inputs) if inp.window is not None and inp.num_frames > 0]
        if audio_rows:
            self._encode([inputs[b] for b in audio_rows], [plan.slots[b] for b in audio_rows],
                         [plan.items[b].kind is ItemKind.END for b in audio_rows])
        return [self._finish(item, slot, inp)
                for item, slot, inp in zip(plan.items, plan.slots, inputs, strict=True)]

    def _admit(self, new_streams: Sequence[NewStream]) -> None:
        """New streams: a fresh decoder each, and their slots' state reset (a slot may hold a previous
        owner's)."""
        for new in new_streams:
            settings: StreamSettings = new.info
            self._slots[new.slot] = _SlotState(
                self._decoder_factory(settings.decoding), settings.endpointing,
                phrases=self._encode_phrases(settings.decoding.phrases),
                hotwords=tuple(h.phrase for h in settings.decoding.hotwords if h.phrase.strip()))
        self.reset_slots([new.slot for new in new_streams])

    def warm_up(self, max_batch_size: int, *, timeout_s: float) -> WarmUp:
        """Run one full step (features, encoder, decoders, endpointing) at every batch size 1 ..
        ``max_batch_size``, then one step that closes those streams (the final path), on scratch streams
        in slots 0 .. ``max_batch_size`` - 1 fed synthetic noise; the slots are reset and forgotten after.

        Call it before any stream is admitted, on the thread that will run the steps. A batch size is
        the only shape a step's tensors depend on (the key/value ring has a fixed length), so this is every
        shape the scheduler can form; the first call at a new shape pays torch's per-shape set-up (and on a
        GPU, kernel selection and compilation). Stops after ``timeout_s`` (the rest stays cold).

        Raises:
            ValueError: ``max_batch_size`` is not in 1 .. the store's slots, or streams are live.
        """
        if not 1 <= max_batch_size <= self.store.max_slots:
            raise ValueError(f"max_batch_size must be in 1..{self.store.max_slots}, got {max_batch_size}")
        if self._slots:
            raise ValueError(f"warm-up needs an idle runner; {len(self._slots)} slots are live")
        started = time.monotonic()
        rng = np.random.default_rng(0)
        settings = StreamSettings()
        done = 0

        def items(batch: int, kind: ItemKind) -> tuple[WorkItem, ...]:
            return tuple(WorkItem(stream_id=b, kind=kind, arrival_s=0.0, payload=ChunkInput(
                window=(rng.standard_normal(self.window_samples) * WARMUP_AMPLITUDE).astype(np.float32),
                num_frames=self.window_frames, audio_end_s=0.0)) for b in range(batch))

        try:
            for batch in range(1, max_batch_size + 1):
                if time.monotonic() - started > timeout_s:
                    break
                self.run_step(StepPlan(step_id=-batch, items=items(batch, ItemKind.AUDIO),
                                       slots=tuple(range(batch)), planned_s=0.0,
                                       new_streams=(NewStream(batch - 1, settings),)))
                done = batch
            # Second-pass finals would come back later, as LateFinals nobody collects: not with a final pass.
            if done and self.finals is None and time.monotonic() - started <= timeout_s:
                self.run_step(StepPlan(step_id=0, items=items(done, ItemKind.END), slots=tuple(range(done)),
                                       planned_s=0.0))
        finally:
            self._slots.clear()
            self.reset_slots(range(max(done, 1)))
        self.warmup = WarmUp(batch_sizes=done, target_batch_sizes=max_batch_size,
                             seconds=round(time.monotonic() - started, 3))
        return self.warmup

    def reset_slots(self, slots: Sequence[int]) -> None:
        """Return ``slots`` of the state store to the initial (empty-memory) state."""
        self.store.reset(torch.tensor(list(slots), dtype=torch.int64, device=self.device))

    def collect_finals(self, wait_s: float = 0.0) -> list[LateFinal]:
        """Second-pass finals ready to go out (each stream's in order), waiting up to ``wait_s`` for one
        when none is ready; always empty without a final pass."""
        self._check_thread()
        return self.finals.collect(wait_s) if self.finals is not None else []

    def close(self) -> None:
        """Stop the second pass's worker (pending finals are dropped)."""
        if self.finals is not None:
            self.finals.close()

    def _encode(self, inputs: list[ChunkInput], slots: list[int], last: list[bool]) -> None:
        windows = np.zeros((len(inputs), self.window_samples), dtype=np.float32)
        for b, inp in enumerate(inputs):
            assert inp.window is not None
            windows[b, : inp.window.shape[0]] = inp.window
        num_frames = torch.tensor([inp.num_frames for inp in inputs], device=self.device)
        feats = self.fbank(torch.from_numpy(windows).to(self.device))  # (B, chunk + look-ahead, n_mels)
        real = torch.arange(self.window_frames, device=self.device)[None, :] < num_frames[:, None]
        feats = feats * real[..., None]  # short last chunks: zero padding, as forward() pads
        index = torch.tensor(slots, device=self.device)
        state = self.store.view(index)
        with torch.autocast(self.device.type, dtype=self.compute_dtype, enabled=self.compute_dtype != torch.float32):
            logits, out_lengths, state = self.model.step(feats, num_frames, state)
        self.store.commit(index, state)
        log_probs = torch.log_softmax(logits.float(), dim=-1).cpu().numpy()  # (B, L, V)
        lengths = out_lengths.cpu().numpy()
        mels = None
        if self.finals is not None:
            whisper = feats if self._whisper_fbank is None else self._whisper_fbank(torch.from_numpy(windows))
            mels = whisper.cpu().numpy()  # (B, chunk + look-ahead, 80)
        for b, slot in enumerate(slots):
            slot_state = self._slots[slot]
            frames = log_probs[b, : int(lengths[b])]  # (f, V)
            slot_state.decoder.accept(frames)
            # a window's look-ahead frames come again in the next window, except after the last one
            new = inputs[b].num_frames if last[b] else min(inputs[b].num_frames, self.chunk_frames)
            self._keep(slot_state, frames, None if mels is None else mels[b, :new])
            slot_state.frames_seen += frames.shape[0]

    def _keep(self, state: _SlotState, log_probs: np.ndarray, mels: np.ndarray | None) -> None:
        """Append a step's CTC log-probs (f, V) and Whisper log-mels (t, 80) to the slot's utterance when a
        phrase scorer or the second pass will read them; mels only up to Whisper's window."""
        utterance = state.utterance
        if not state.phrases and self.finals is None:
            utterance.start_frame = state.frames_seen + log_probs.shape[0]  # nobody reads the utterance
            return
        utterance.log_probs.append(log_probs.copy())
        if mels is None or utterance.too_long:
            return
        if utterance.num_mel_frames + mels.shape[0] > MAX_SECOND_PASS_MEL_FRAMES:
            utterance.too_long = True
            utterance.mels.clear()
            utterance.num_mel_frames = 0
            return
        utterance.mels.append(mels.copy())
        utterance.num_mel_frames += mels.shape[0]

    def _finish(self, item: WorkItem, slot: int, inp: ChunkInput) -> StreamOutput:
        state = self._slots[slot]
        decoder, endpointing = state.decoder, state.endpointing
        had_speech = bool(state.last_partial)
        held = self.finals is not None and self.finals.has_pending(item.stream_id)
        hyp = decoder.partial()
        finals: list[Hypothesis] = []
        started = hyp.start_s if (not had_speech and not hyp.is_empty and not held) else None
        ended: float | None = None
        close = item.kind in (ItemKind.FINALIZE, ItemKind.END)
        if not close and endpointing.enabled:
            close = endpoint_reached(decoder, hyp, frame_s=self.frame_s, silence_s=endpointing.silence_s,
                                     max_utterance_s=endpointing.max_utterance_s)
        partial: Hypothesis | None = None
        pending = False
        if hyp.is_empty and not close:
            state.utterance.drop_leading(MAX_LEADING_CHUNKS)
        if close:
            final = self.calibration.hypothesis(decoder.finalize())
            utterance, state.utterance = state.utterance, _Utterance(start_frame=state.frames_seen)
            log_probs = self._utterance_log_probs(utterance)  # (F, V)
            if state.phrases:
                final = replace(final, phrase_scores=self._score_phrases(state, log_probs))
            if self.finals is not None:
                pending = self._submit_final(item, state, utterance, log_probs, final,
                                             announce=not final.is_empty and started is None and not had_speech)
            elif not final.is_empty:
                finals.append(final)
                ended = final.end_s
            state.last_partial = ""
        elif hyp.text != state.last_partial and not held:
            partial = self.calibration.hypothesis(hyp)  # only what is sent pays for the mapping
            state.last_partial = hyp.text
        return StreamOutput(stream_id=item.stream_id, partial=partial, finals=tuple(finals),
                            speech_started_s=started, speech_ended_s=ended, audio_end_s=inp.audio_end_s,
                            final_pending=pending)

    def _submit_final(self, item: WorkItem, state: _SlotState, utterance: _Utterance, log_probs: np.ndarray,
                      ctc_final: Hypothesis, *, announce: bool) -> bool:
        """Hand a closed utterance (its CTC log-probs (F, V) given) to the second pass when it has words.

        ``announce``: no SpeechStarted went out for this utterance (its partials were held back), so its
        late final carries one. Returns whether a final is now pending."""
        assert self.finals is not None
        if ctc_final.is_empty:
            return False
        mels = np.concatenate(utterance.mels) if utterance.mels else np.zeros((0, 80), np.float32)  # (T, 80)
        inp: ChunkInput = item.payload
        self.finals.submit(FinalJob(
            stream_id=item.stream_id, mels=mels, log_probs=log_probs, start_s=utterance.start_frame * self.frame_s,
            hotwords=state.hotwords, ctc_final=ctc_final,
            speech_started_s=ctc_final.start_s if announce else None, audio_end_s=inp.audio_end_s,
            arrival_s=item.arrival_s, use_second_pass=not utterance.too_long and mels.shape[0] > 0))
        return True


class RunnerCrashed(RuntimeError):
    """The model runner is lost (its process died, or it could not be started or restarted): every slot's
    state is gone. The message says why."""


class StepFailed(RuntimeError):
    """A step raised in the model process; the runner lives on and only the step's streams are affected."""


class AsyncRunner(Protocol):
    """How the engine drives a model runner: one step (or one collection of late finals) at a time,
    awaited.

    ``run_step`` raises :class:`RunnerCrashed` when the runner is lost (every slot's state with it), and any
    other exception when only that step failed. :meth:`restart` replaces a lost or stalled runner with a
    fresh one (empty slots); a step still stuck in the old one is abandoned.
    """

    info: RunnerInfo

    async def run_step(self, plan: StepPlan) -> list[StreamOutput]: ...

    async def collect_finals(self, wait_s: float) -> list[LateFinal]: ...

    async def restart(self) -> None: ...

    async def close(self) -> None: ...


class ThreadRunner:
    """Runs a :class:`ModelRunner` on a dedicated thread of this process.

    ``rebuild`` makes a fresh :class:`ModelRunner` for :meth:`restart` (without it a stalled thread runner
    cannot be replaced, and :meth:`restart` raises :class:`RunnerCrashed`). A thread cannot be killed: a
    restart leaves a stuck step to finish on its own thread, whose result is dropped, and gives the new
    runner a thread of its own.
    """

    def __init__(self, runner: ModelRunner, *, rebuild: Callable[[], ModelRunner] | None = None) -> None:
        self.runner = runner
        self.info = runner.info
        self._rebuild = rebuild
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xlgate-model")

    async def restart(self) -> None:
        if self._rebuild is None:
            raise RunnerCrashed("this thread runner has no way to rebuild its model runner")
        old, old_executor = self.runner, self._executor
        old_executor.submit(old.close)  # runs once the stuck step (if any) returns
        old_executor.shutdown(wait=False)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xlgate-model")
        self.runner = await asyncio.get_running_loop().run_in_executor(self._executor, self._rebuild)

    async def run_step(self, plan: StepPlan) -> list[StreamOutput]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.runner.run_step, plan)

    async def warm_up(self, max_batch_size: int, *, timeout_s: float) -> WarmUp:
        """:meth:`ModelRunner.warm_up` on the model thread (the one that will run the steps)."""
        warmup = await asyncio.get_running_loop().run_in_executor(
            self._executor, lambda: self.runner.warm_up(max_batch_size, timeout_s=timeout_s))
        self.info = self.runner.info
        return warmup

    async def collect_finals(self, wait_s: float) -> list[LateFinal]:
        if self.runner.finals is None:
            return []
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.runner.collect_finals, wait_s)

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.runner.close)
        await loop.run_in_executor(None, self._executor.shutdown, True)


@dataclass(frozen=True, slots=True)
class RunnerSpec:
    """How a child process builds its runner (everything picklable)."""

    model: str
    device: str
    max_streams: int
    num_threads: int
    quantize: Quantization = Quantization.NONE
    lm: str = "bundled"
    rel_attention: RelAttention = RelAttention.AUTO
    final_pass: FinalPass = FinalPass.NONE
    final_pass_budget_s: float = 0.3
    warmup_batch_size: int = 0  # warm up batch sizes 1 .. this before saying ready (0: no warm-up)
    warmup_timeout_s: float = 0.0


@dataclass(frozen=True, slots=True)
class CollectFinals:
    """Request to the model process: its late finals, waiting up to ``wait_s`` for one."""

    wait_s: float


def _child_main(conn: Connection, spec: RunnerSpec) -> None:
    """Entry point of the model process: build the runner, then serve steps until told to stop.

    SIGINT and SIGTERM are ignored here: Ctrl-C (or a signal to the whole process group) reaches this
    process too, and the parent's drain still needs the model to finalise its live streams; the parent ends
    this process (None on the pipe, or a kill), and a parent that dies closes the pipe, which ends it too.
    """
    import signal

    import torch

    from gateway.models import load_model

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    try:
        torch.set_num_threads(spec.num_threads)
        runner = ModelRunner(load_model(spec.model, spec.device, warn=False), max_streams=spec.max_streams,
                             device=spec.device, num_threads=spec.num_threads, quantize=spec.quantize,
                             lm=LanguageModel.load(spec.lm), rel_attention=spec.rel_attention,
                             final_pass=spec.final_pass, final_pass_budget_s=spec.final_pass_budget_s)
        if spec.warmup_batch_size:
            runner.warm_up(spec.warmup_batch_size, timeout_s=spec.warmup_timeout_s)
            freeze_heap()
        conn.send(("ready", runner.info))
    except Exception as exc:  # reported to the parent, which raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    while True:
        try:
            request = conn.recv()  # a StepPlan, a CollectFinals, or None to stop
        except EOFError:
            runner.close()
            return
        if request is None:
            runner.close()
            return
        try:
            if isinstance(request, CollectFinals):
                conn.send(("ok", runner.collect_finals(request.wait_s)))
            else:
                conn.send(("ok", runner.run_step(request)))
        except Exception as exc:
            log.exception("model step failed")
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class ProcessRunner:
    """Runs a :class:`ModelRunner` in a child process (spawned, so no torch state is inherited).

    Steps are sent and received over a pipe by one I/O thread, which only pickles small inputs and outputs
    (a 32-stream step is ~200 kB); the model itself never takes this process's GIL.
    """

    def __init__(self, spec: RunnerSpec) -> None:
        self.spec = spec
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xlgate-model-io")
        self._conn, self._process = self._spawn()
        self.info: RunnerInfo

    def _spawn(self) -> tuple[Connection, multiprocessing.process.BaseProcess]:
        ctx = multiprocessing.get_context("spawn")
        conn, child_conn = ctx.Pipe()
        process = ctx.Process(target=_child_main, args=(child_conn, self.spec), name="xlgate-model", daemon=True)
        self._child_conn = child_conn
        return conn, process

    @property
    def pid(self) -> int | None:
        """The model process's id (None before it starts)."""
        return self._process.pid

    async def start(self) -> None:
        """Start the process and wait until its model is loaded.

        Raises:
            RunnerCrashed: the process failed to load the model.
        """
        self._process.start()
        self._child_conn.close()
        kind, payload = await asyncio.get_running_loop().run_in_executor(self._io, self._recv)
        if kind != "ready":
            await self.close()
            raise RunnerCrashed(f"model process failed to start: {payload}")
        self.info = payload

    async def restart(self) -> None:
        """Kill the model process (a stuck step's pipe read then ends) and start a fresh one."""
        old_conn, old_process = self._conn, self._process
        if old_process.is_alive():
            old_process.kill()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, old_process.join)
        # The I/O thread is free once the abandoned step's read has failed on the dead pipe.
        await loop.run_in_executor(self._io, old_conn.close)
        self._conn, self._process = self._spawn()
        self._process.start()
        self._child_conn.close()
        kind, payload = await loop.run_in_executor(self._io, self._recv)
        if kind != "ready":
            raise RunnerCrashed(f"model process failed to restart: {payload}")
        self.info = payload

    def _recv(self) -> tuple[str, Any]:
        try:
            return self._conn.recv()  # type: ignore[no-any-return]
        except (EOFError, OSError) as exc:
            raise RunnerCrashed(f"model process died (exit code {self._process.exitcode})") from exc

    def _roundtrip(self, request: StepPlan | CollectFinals) -> Any:
        try:
            self._conn.send(request)
        except (BrokenPipeError, OSError) as exc:
            raise RunnerCrashed(f"model process died (exit code {self._process.exitcode})") from exc
        kind, payload = self._recv()
        if kind != "ok":
            raise StepFailed(f"model step failed in the model process: {payload}")
        return payload

    async def run_step(self, plan: StepPlan) -> list[StreamOutput]:
        outputs: list[StreamOutput] = await asyncio.get_running_loop().run_in_executor(
            self._io, self._roundtrip, plan)
        return outputs

    async def collect_finals(self, wait_s: float) -> list[LateFinal]:
        if self.spec.final_pass is FinalPass.NONE:
            return []
        finals: list[LateFinal] = await asyncio.get_running_loop().run_in_executor(
            self._io, self._roundtrip, CollectFinals(wait_s))
        return finals

    async def close(self) -> None:
        def stop() -> None:
            if self._process.is_alive():
                try:
                    self._conn.send(None)
                except OSError:
                    pass
                self._process.join(timeout=10)
                if self._process.is_alive():
                    self._process.kill()
                    self._process.join()
            self._conn.close()

        await asyncio.get_running_loop().run_in_executor(self._io, stop)
        self._io.shutdown(wait=True)
