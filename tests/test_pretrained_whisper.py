"""Whisper's encoder read from its CTranslate2 conversion: the reader, our re-implementation against
CTranslate2's own encoder on real (synthesised) audio, the 8 kHz Whisper features, and the streaming
student initialised from it (step == forward, Whisper's front end delayed by one frame)."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.signal import resample_poly

from streaming_model.data.voices import VoiceSpec, synthesize
from streaming_model.features import compute_fbank, slaney_mel_filters, whisper_features
from streaming_model.model import StreamingTransformerXL
from streaming_model.pretrained.ct2 import Ct2FormatError, parse_ct2, read_ct2
from streaming_model.pretrained.whisper import (
    init_student,
    load_whisper_encoder,
    student_config,
    whisper_model_dir,
)

VOICE = VoiceSpec("espeak", "en-us", rate=160, pitch=50, word_gap=0, alpha=1.0, eq=())


@pytest.fixture(scope="module")
def ct2_model():
    return read_ct2(whisper_model_dir())


@pytest.fixture(scope="module")
def teacher(ct2_model):
    return load_whisper_encoder(ct2_model)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return synthesize("thank you for calling how can i help you today", VOICE, seed=0).astype(np.float32)


def _string(s: str) -> bytes:
    raw = s.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _tiny_bin(version: int = 6) -> bytes:
    body = struct.pack("<I", version) + _string("TinySpec") + struct.pack("<I", 2) + struct.pack("<I", 3)
    body += _string("a/weight") + struct.pack("<B", 2) + struct.pack("<II", 2, 3) + struct.pack("<B", 4)
    body += struct.pack("<I", 12) + np.arange(6, dtype="<f2").tobytes()
    body += _string("a/scale") + struct.pack("<B", 0) + struct.pack("<B", 1) + struct.pack("<I", 1) + b"\x07"
    bf16 = (np.array([1.5, -2.0], dtype="<f4").view("<u4") >> 16).astype("<u2")
    body += _string("b/bf") + struct.pack("<B", 1) + struct.pack("<I", 2) + struct.pack("<B", 5)
    body += struct.pack("<I", 4) + bf16.tobytes()
    body += struct.pack("<I", 1) + _string("c/alias") + _string("a/weight")
    return body


def test_reader_parses_every_field_and_alias() -> None:
    m = parse_ct2(_tiny_bin())
    assert (m.spec, m.revision, m.binary_version) == ("TinySpec", 2, 6)
    np.testing.assert_array_equal(m.get("a/weight"), np.arange(6, dtype=np.float16).reshape(2, 3))
    assert m.get("a/scale").dtype == np.int8 and int(m.get("a/scale")) == 7
    np.testing.assert_array_equal(m.get("b/bf"), np.array([1.5, -2.0], dtype=np.float32))
    np.testing.assert_array_equal(m.get("c/alias"), m.get("a/weight"))
    with pytest.raises(KeyError, match="a/weight"):
        m.get("a/missing")


def test_reader_rejects_every_truncation_and_bad_version() -> None:
    data = _tiny_bin()
    for cut in range(len(data) - 1):
        if cut == len(data) - len(struct.pack("<I", 1) + _string("c/alias") + _string("a/weight")):
            continue  # a file may end before its alias table (older binary versions)
        with pytest.raises(Ct2FormatError):
            parse_ct2(data[:cut])
    with pytest.raises(Ct2FormatError, match="binary version"):
        parse_ct2(_tiny_bin(version=99))
    with pytest.raises(Ct2FormatError, match="trailing"):
        parse_ct2(data + b"\0")


def test_whisper_tiny_en_variables(ct2_model) -> None:
    assert ct2_model.spec == "WhisperSpec"
    assert ct2_model.get("encoder/conv1/weight").shape == (384, 80, 3)
    assert ct2_model.get("encoder/position_encodings/encodings").shape == (1500, 384)
    assert int(ct2_model.get("encoder/num_heads")) == 6
    assert ct2_model.get("encoder/layer_3/self_attention/linear_0/weight").shape == (1152, 384)


def test_mel_filters_are_whispers() -> None:
    # Checked element-wise against openai-whisper's assets/mel_filters.npz (mel_80): max difference 1.9e-9.
    # Here: librosa's Slaney properties that define it (area norm, triangle peaks, empty top bins) and
    # figures read from that file (its total, row 10's sum, row 40's peak bin and value).
    f = slaney_mel_filters(sample_rate_hz=16000, n_fft=400, n_mels=80)
    assert f.shape == (80, 201)
    assert f[0, 0] == 0.0 and f[0, 1] == pytest.approx(0.02486259, rel=1e-5)
    assert f[79].argmax() > 180 and float(f[:, 200].sum()) == 0.0
    assert float(f.sum()) == pytest.approx(1.9990241527557373, rel=1e-6)
    assert float(f[10].sum()) == pytest.approx(0.024862593039870262, rel=1e-6)
    assert int(f[40].argmax()) == 43 and float(f[40].max()) == pytest.approx(0.014735566452145576, rel=1e-6)


def test_8khz_features_match_whisper_16khz_log_mel(speech: np.ndarray) -> None:
    """Our features of the 8 kHz signal against Whisper's recipe (400-point periodic Hann STFT, power, its
    mel filters, log10, floor, scale) on the signal resampled to 16 kHz, framed where ours are framed."""
    cfg = whisper_features()
    ours = compute_fbank(speech, cfg)  # (T, 80)
    audio16 = torch.from_numpy(resample_poly(speech, 2, 1).astype(np.float32))
    padded = F.pad(audio16, (2 * cfg.context_samples, 400))
    frames = padded.unfold(0, 400, 160)[:ours.shape[0]]  # frame t: 16 kHz samples [160t - 240, 160t + 160)
    power = torch.fft.rfft(frames * torch.hann_window(400), n=400).abs() ** 2  # (T, 201)
    mel = power @ torch.from_numpy(slaney_mel_filters(sample_rate_hz=16000, n_fft=400, n_mels=80)).T
    ref = (mel.clamp(min=1e-10).log10().clamp_min(cfg.log_ceiling - 8.0) + 4.0) / 4.0  # (T, 80)
    speech_rows = ref.amax(dim=1) > -0.5  # frames with energy (the floor is exact either way)
    diff = (ours - ref)[speech_rows].abs()  # (T', 80)
    assert int(speech_rows.sum()) > 100
    # Measured: 0.011 on average (0.045 in log10 power); the bins near 4 kHz (63-65) differ most, by the
    # 16 kHz resampler's roll-off, not by our computation. Below them the two agree closely.
    assert float(diff.mean()) < 0.02, float(diff.mean())
    assert float(diff[:, :60].mean()) < 0.015, float(diff[:, :60].mean())
    assert float(F.cosine_similarity(ours.flatten(), ref.flatten(), dim=0)) > 0.99


def test_encoder_matches_ctranslate2(ct2_model, teacher, speech: np.ndarray) -> None:
    ctranslate2 = pytest.importorskip("ctranslate2")  # a pinned dependency: present wherever tests run
    cfg = whisper_features()
    mel = compute_fbank(speech, cfg)
    padded = torch.full((3000, 80), (cfg.log_ceiling - 8.0 + 4.0) / 4.0)  # 30 s of silence, as Whisper pads
    padded[:mel.shape[0]] = mel
    model = ctranslate2.models.Whisper(str(whisper_model_dir()), device="cpu", compute_type="float32")
    ref = np.array(model.encode(ctranslate2.StorageView.from_array(padded.T[None].contiguous().numpy()),
                                to_cpu=True))
    with torch.no_grad():
        ours = teacher(padded[None]).numpy()
    assert ours.shape == ref.shape == (1, 1500, 384)
    # float32 here; the weights are float16, so agreement to float32 rounding is well within fp16 tolerance
    assert float(np.abs(ours - ref).max()) < 1e-3, float(np.abs(ours - ref).max())


def test_student_front_end_is_whispers_delayed_by_one_frame(teacher, speech: np.ndarray) -> None:
    student = StreamingTransformerXL(student_config(teacher.config, vocab_size=29))
    init_student(student, teacher)
    mel = compute_fbank(speech, whisper_features())[None, :200]
    with torch.no_grad():
        ref = F.gelu(teacher.conv2(F.gelu(teacher.conv1(mel.transpose(1, 2))))).transpose(1, 2)  # (1, 100, D)
        ours, _, _ = student._front_end(mel, mel.new_zeros(1, 2, 80), mel.new_zeros(1, 2, 384), None)
        ours = ours - student.fe_proj.bias
    torch.testing.assert_close(ours[0, 2:], ref[0, 1:-1], atol=1e-4, rtol=1e-4)


def test_student_step_equals_forward_with_streams_at_different_positions(teacher) -> None:
    torch.manual_seed(0)
    config = student_config(teacher.config, vocab_size=29, chunk_frames=8, mem_frames=16, dropout=0.0)
    student = StreamingTransformerXL(config).eval()
    init_student(student, teacher)
    with torch.no_grad():  # exercise the position terms too
        for layer in student.layers:
            layer.attn.pos.weight.normal_(0, 0.05)
            layer.attn.u.normal_(0, 0.3)
            layer.attn.v.normal_(0, 0.3)
    step = config.chunk_feature_frames
    feats = torch.randn(2, 6 * step, 80) * 0.5
    lengths = torch.tensor([6 * step, 4 * step + 5])
    with torch.no_grad():
        full, out_lengths = student(feats, lengths)
        # stream 1 starts two chunks after stream 0: the batch holds streams at different positions
        state = student.initial_state(2)
        outs: list[list[torch.Tensor]] = [[], []]
        for k in range(8):
            pos = [k, k - 2]
            active = [b for b in range(2) if 0 <= pos[b] < 6 and pos[b] * step < lengths[b]]
            if not active:
                continue
            chunk = torch.stack([feats[b, pos[b] * step:(pos[b] + 1) * step] for b in active])
            n = torch.tensor([min(step, int(lengths[b]) - pos[b] * step) for b in active])
            sub = type(state).from_flat([t[active] for t in state.flat()], config.n_layers)
            logits, _, sub = student.step(chunk, n, sub)
            for t, new in zip(state.flat(), sub.flat(), strict=True):
                t[active] = new
            for i, b in enumerate(active):
                outs[b].append(logits[i])
    for b in range(2):
        stepped = torch.cat(outs[b])[:int(out_lengths[b])]
        torch.testing.assert_close(stepped, full[b, :int(out_lengths[b])], atol=1e-4, rtol=1e-4)
