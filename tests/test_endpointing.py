"""Endpointing and utterance events in the runner, with the real greedy decoder fed scripted frames.

The model runs for real; only the decoder's input is replaced by a script of CTC frames (speech tokens or
blanks), because a model that produces exact pauses on cue cannot be trained inside a unit test.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from gateway.runner import ChunkInput, ModelRunner
from gateway.scheduler import ItemKind, NewStream, StepPlan, WorkItem
from gateway.session import EndpointingSettings, StreamSettings
from streaming_model.checkpoint import LoadedModel
from streaming_model.decoding import GreedyDecoder, endpoint_reached
from streaming_model.features import FbankConfig
from streaming_model.tokenizer import CharTokenizer
from tests.conftest import make_tiny_model

TOK = CharTokenizer()
V = TOK.vocab_size


def frames(text: str) -> list[np.ndarray]:
    """One frame per symbol: '_' is blank, other characters are themselves (a spike each)."""
    out = []
    for ch in text:
        lp = np.full(V, -10.0, dtype=np.float32)
        lp[0 if ch == "_" else TOK.symbols.index(ch)] = 0.0
        out.append(lp)
    return out


class Scripted(GreedyDecoder):
    def __init__(self, script: deque[np.ndarray]) -> None:
        super().__init__(TOK, frame_s=0.04)
        self.script = script

    def accept(self, log_probs: np.ndarray) -> None:
        n = log_probs.shape[0]
        take = [self.script.popleft() if self.script else frames("_")[0] for _ in range(n)]
        super().accept(np.stack(take))


def run(script: str, *, silence_s: float, max_utt_s: float = 20.0, end_after: int | None = None,
        enabled: bool = True) -> list:
    queue: deque[np.ndarray] = deque(frames(script))
    loaded = LoadedModel(make_tiny_model(), FbankConfig(), TOK, trained=False)
    runner = ModelRunner(loaded, max_streams=1, decoder_factory=lambda p: Scripted(queue))
    outputs = []
    steps = end_after if end_after is not None else -(-len(script) // 4)
    for k in range(steps + 1):
        last = k == steps
        window = np.zeros(1400 if not last else 120, dtype=np.float32)
        item = WorkItem(0, ItemKind.END if last else ItemKind.AUDIO, 0.0,
                        ChunkInput(window=window, num_frames=0 if last else 16, audio_end_s=0.16 * (k + 1)))
        settings = StreamSettings(endpointing=EndpointingSettings(enabled=enabled, silence_s=silence_s,
                                                                  max_utterance_s=max_utt_s))
        outputs.append(runner.run_step(StepPlan(step_id=k, items=(item,), slots=(0,), planned_s=0.0,
                                                new_streams=(NewStream(0, settings),) if k == 0 else ())))
    return [o[0] for o in outputs]


def finals(outs: list) -> list[str]:
    return [f.text for o in outs for f in o.finals]


def test_trailing_silence_ends_utterance_and_next_starts() -> None:
    # "hi", 12 blank frames (480 ms), "yo", then blanks to the end.
    outs = run("h_i_" + "_" * 12 + "y_o_" + "_" * 4, silence_s=0.4)
    assert finals(outs) == ["hi", "yo"]
    started = [o.speech_started_s for o in outs if o.speech_started_s is not None]
    ended = [o.speech_ended_s for o in outs if o.speech_ended_s is not None]
    assert len(started) == 2 and started[0] == 0.0
    assert len(ended) == 2 and abs(ended[0] - 0.12) < 1e-9  # "i" spikes at frame 2: ends at 3 x 40 ms
    # A partial shows the current utterance only.
    partial_texts = [o.partial.text for o in outs if o.partial is not None]
    assert "hi" in partial_texts and "yo" in partial_texts and "hi yo" not in partial_texts


def test_short_pause_does_not_end_utterance() -> None:
    outs = run("h_i_ " + "_" * 6 + "y_o_", silence_s=0.4)
    assert finals(outs) == ["hi yo"]  # the END item closes it, as one utterance


def test_silence_only_stream_yields_no_final_and_no_events() -> None:
    outs = run("_" * 40, silence_s=0.4)
    assert finals(outs) == []
    assert all(o.partial is None and o.speech_started_s is None for o in outs)


def test_max_utterance_forces_a_final() -> None:
    outs = run("ab" * 20, silence_s=5.0, max_utt_s=0.6)
    texts = finals(outs)
    assert len(texts) >= 2 and all(texts)


def test_disabled_endpointing_waits_for_end() -> None:
    outs = run("h_i_ " + "_" * 30 + "y_o_", silence_s=0.2, enabled=False)
    assert finals(outs) == ["hi yo"]


def test_the_endpoint_rule_itself() -> None:
    """streaming_model.decoding.endpoint_reached, the one rule the runner and the dev-set report share."""
    decoder = GreedyDecoder(TOK)
    for lp in frames("__hi"):
        decoder.accept(lp[None])
    rule = {"frame_s": 0.04, "silence_s": 0.2, "max_utterance_s": 1.0}
    assert not endpoint_reached(decoder, decoder.partial(), **rule)
    for lp in frames("____"):
        decoder.accept(lp[None])
    assert not endpoint_reached(decoder, decoder.partial(), **rule)  # 4 frames = 0.16 s of silence
    decoder.accept(frames("_")[0][None])
    assert endpoint_reached(decoder, decoder.partial(), **rule)  # 0.2 s
    decoder.finalize()
    assert not endpoint_reached(decoder, decoder.partial(), **rule)  # nothing heard since: no endpoint
    talker = GreedyDecoder(TOK)
    for lp in frames("ab" * 13):  # 26 frames of speech from 0 s: 1.04 s
        talker.accept(lp[None])
    assert endpoint_reached(talker, talker.partial(), **rule)
