"""The model runner: executes one batched step (features, encoder, decoding, endpointing) off the event loop.

The engine calls :meth:`ModelRunner.run_step` from a dedicated worker thread. Everything the runner
touches (the state store, the per-stream decoders) belongs to that thread: the event loop only hands it
immutable inputs and receives immutable outputs. A GPU runner keeps the same interface and swaps the state
store for a device-resident one.

Dimension legend: B streams in the step, N samples, T frames, V vocabulary.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from gateway.scheduler import ItemKind, WorkItem
from streaming_model.checkpoint import LoadedModel
from streaming_model.decoding import GreedyDecoder, Hypothesis, StreamDecoder
from streaming_model.features import Fbank
from streaming_model.model import StateStore


@dataclass(frozen=True, slots=True)
class EndpointParams:
    """When an utterance ends by itself (seconds; research note §4, WeNet/sherpa-onnx rule 2 and 3)."""

    enabled: bool = True
    silence_s: float = 1.0  # trailing silence after speech
    max_utterance_s: float = 20.0


@dataclass(frozen=True, slots=True)
class DecoderParams:
    method: str = "greedy"
    beam_size: int = 8
    hotwords: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class ChunkInput:
    """The runner's input for one stream in one step (``WorkItem.payload``)."""

    slot: int
    window: np.ndarray | None  # float32 samples with left context; None for a control item
    num_frames: int  # real feature frames in the window (0 .. chunk)
    first: bool  # the stream's first item: reset its slot and create its decoder
    endpoint: EndpointParams
    decoder: DecoderParams
    audio_end_s: float  # how far into the stream's audio the stream is after this item


@dataclass(frozen=True, slots=True)
class StreamOutput:
    """What one step produced for one stream."""

    stream_id: int
    partial: Hypothesis | None  # the current utterance's hypothesis when it changed
    finals: tuple[Hypothesis, ...]
    speech_started_s: float | None
    speech_ended_s: float | None
    audio_end_s: float


DecoderFactory = Callable[[DecoderParams], StreamDecoder]


class ModelRunner:
    """Runs steps for up to ``max_streams`` concurrent streams on one device.

    Slot numbers (0 .. max_streams-1) are handed out by the engine; a stream's first item resets its slot
    and creates its decoder, its END item drops the decoder. An aborted stream's decoder is simply
    replaced when its slot is next used.
    """

    def __init__(self, loaded: LoadedModel, *, max_streams: int, device: str = "cpu",
                 compute_dtype: torch.dtype = torch.float32, num_threads: int | None = None,
                 decoder_factory: DecoderFactory | None = None) -> None:
        self.loaded = loaded
        self.config = loaded.model.config
        self.device = torch.device(device)
        self.compute_dtype = compute_dtype
        self.num_threads = num_threads
        self.model = loaded.model.to(self.device).eval()
        self.fbank = Fbank(loaded.features).to(self.device)
        self.store = StateStore(self.config, max_streams, device=self.device)
        self.frame_s = self.config.subsampling * loaded.features.hop_samples / loaded.features.sample_rate_hz
        self._decoders: dict[int, StreamDecoder] = {}
        self._last_partial: dict[int, str] = {}
        self._decoder_factory = decoder_factory or self._default_decoder
        self._thread: int | None = None
        self.chunk_frames = self.config.chunk_feature_frames
        self.window_samples = loaded.features.context_samples + self.chunk_frames * loaded.features.hop_samples

    def _default_decoder(self, params: DecoderParams) -> StreamDecoder:
        return GreedyDecoder(self.loaded.tokenizer, frame_s=self.frame_s)

    def _check_thread(self) -> None:
        ident = threading.get_ident()
        if self._thread is None:
            self._thread = ident
            if self.num_threads:
                torch.set_num_threads(self.num_threads)  # OpenMP settings are per thread
        assert self._thread == ident, "ModelRunner used from two threads"

    @torch.inference_mode()
    def run_step(self, items: Sequence[WorkItem]) -> list[StreamOutput]:
        """Execute one step; ``items`` carry :class:`ChunkInput` payloads, one per stream."""
        self._check_thread()
        inputs: list[ChunkInput] = [i.payload for i in items]
        for inp in inputs:
            if inp.first:
                self._decoders[inp.slot] = self._decoder_factory(inp.decoder)
                self._last_partial[inp.slot] = ""
        audio_rows = [b for b, inp in enumerate(inputs) if inp.window is not None and inp.num_frames > 0]
        if audio_rows:
            self._encode([inputs[b] for b in audio_rows])
        outputs = [self._finish(item, inp) for item, inp in zip(items, inputs, strict=True)]
        return outputs

    def _encode(self, inputs: list[ChunkInput]) -> None:
        windows = np.zeros((len(inputs), self.window_samples), dtype=np.float32)
        for b, inp in enumerate(inputs):
            assert inp.window is not None
            windows[b, : inp.window.shape[0]] = inp.window
        num_frames = torch.tensor([inp.num_frames for inp in inputs], device=self.device)
        feats = self.fbank(torch.from_numpy(windows).to(self.device))  # (B, chunk, n_mels)
        real = torch.arange(self.chunk_frames, device=self.device)[None, :] < num_frames[:, None]
        feats = feats * real[..., None]  # short last chunks: zero padding, as forward() pads
        slots = torch.tensor([inp.slot for inp in inputs], device=self.device)
        fresh = [b for b, inp in enumerate(inputs) if inp.first]
        state = self.store.view(slots)
        if fresh:
            # A new stream's slot may hold a previous owner's state: its position and caches start from
            # zero. Its rings need no reset: at position 0 every ring slot is masked until written.
            rows = torch.tensor(fresh, device=self.device)
            for t in [state.fe1, state.fe2, *state.conv, state.frames]:
                t.index_fill_(0, rows, 0)
        with torch.autocast(self.device.type, dtype=self.compute_dtype, enabled=self.compute_dtype != torch.float32):
            logits, out_lengths, state = self.model.step(feats, num_frames, state)
        self.store.commit(slots, state)
        log_probs = torch.log_softmax(logits.float(), dim=-1).cpu().numpy()  # (B, L, V)
        lengths = out_lengths.cpu().numpy()
        for b, inp in enumerate(inputs):
            self._decoders[inp.slot].accept(log_probs[b, : int(lengths[b])])

    def _finish(self, item: WorkItem, inp: ChunkInput) -> StreamOutput:
        decoder = self._decoders[inp.slot]
        had_speech = bool(self._last_partial.get(inp.slot))
        hyp = decoder.partial()
        finals: list[Hypothesis] = []
        started = hyp.start_s if (not had_speech and not hyp.is_empty) else None
        ended: float | None = None
        close = item.kind in (ItemKind.FINALIZE, ItemKind.END)
        if not close and inp.endpoint.enabled and not hyp.is_empty:
            silence_s = decoder.trailing_silence_frames * self.frame_s
            long_s = decoder.frames_decoded * self.frame_s - hyp.start_s
            close = silence_s >= inp.endpoint.silence_s or long_s >= inp.endpoint.max_utterance_s
        partial: Hypothesis | None = None
        if close:
            final = decoder.finalize()
            if not final.is_empty:
                finals.append(final)
                ended = final.end_s
            self._last_partial[inp.slot] = ""
        elif hyp.text != self._last_partial.get(inp.slot, ""):
            partial = hyp
            self._last_partial[inp.slot] = hyp.text
        if item.kind is ItemKind.END:
            self._decoders.pop(inp.slot, None)
            self._last_partial.pop(inp.slot, None)
        return StreamOutput(stream_id=item.stream_id, partial=partial, finals=tuple(finals),
                            speech_started_s=started, speech_ended_s=ended, audio_end_s=inp.audio_end_s)
