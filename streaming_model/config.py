"""Model geometry: one frozen dataclass, stored in every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

FRONTEND_SUBSAMPLING = {"xl": 4, "whisper": 2}


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Geometry of the streaming Transformer-XL CTC encoder.

    Times: a feature frame is 10 ms. The ``"xl"`` front end (the from-scratch models) subsamples by 4, so
    an encoder frame is 40 ms; the ``"whisper"`` one (Whisper's two convolutions made causal) by 2: 20 ms.
    ``chunk_frames`` and ``mem_frames`` count encoder frames.
    """

    n_mels: int = 64
    vocab_size: int = 29  # blank + 26 letters + apostrophe + space (character tokenizer)
    d_model: int = 256
    n_heads: int = 4
    n_layers: int = 6
    d_ff: int = 1024
    conv_kernel: int = 15  # causal depthwise convolution per layer; 0 disables it
    frontend_channels: int = 256
    chunk_frames: int = 4  # 160 ms of audio per streaming step
    mem_frames: int = 64  # 2.56 s of cached keys/values per layer
    # Look-ahead: frames after a chunk that its frames may also see (Emformer-style right context). Each
    # step then needs R more frames of audio, so results come R x 40 ms later; 0 (default) = none beyond
    # the chunk itself.
    right_frames: int = 0
    dropout: float = 0.1

    subsampling: int = 4  # fixed by the front end: 4 for "xl", 2 for "whisper"
    # "xl": two causal stride-2 convolutions. "whisper": Whisper's kernel-3 convolutions (stride 1, then 2)
    # made causal, i.e. Whisper's front end delayed by one encoder frame (docs/model.md).
    frontend: str = "xl"

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {self.chunk_frames}")
        if self.mem_frames < 0:
            raise ValueError(f"mem_frames must be >= 0, got {self.mem_frames}")
        if self.right_frames < 0:
            raise ValueError(f"right_frames must be >= 0, got {self.right_frames}")
        if self.conv_kernel == 1 or self.conv_kernel < 0:
            raise ValueError(f"conv_kernel must be 0 (off) or >= 2, got {self.conv_kernel}")
        if self.frontend not in FRONTEND_SUBSAMPLING:
            raise ValueError(f"frontend must be one of {sorted(FRONTEND_SUBSAMPLING)}, got {self.frontend!r}")
        if self.subsampling != FRONTEND_SUBSAMPLING[self.frontend]:
            raise ValueError(f"the {self.frontend} front end subsamples by exactly "
                             f"{FRONTEND_SUBSAMPLING[self.frontend]}, got {self.subsampling}")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def chunk_feature_frames(self) -> int:
        """Feature frames (10 ms) per streaming step."""
        return self.chunk_frames * self.subsampling

    @property
    def right_feature_frames(self) -> int:
        """Feature frames of look-ahead a step needs beyond its chunk."""
        return self.right_frames * self.subsampling

    @property
    def step_feature_frames(self) -> int:
        """Feature frames in one step's input window: the chunk and its look-ahead."""
        return self.chunk_feature_frames + self.right_feature_frames

    @property
    def right_ms(self) -> int:
        return self.right_feature_frames * 10

    @property
    def chunk_ms(self) -> int:
        return self.chunk_feature_frames * 10

    @property
    def mem_ms(self) -> int:
        return self.mem_frames * self.subsampling * 10

    @property
    def frame_ms(self) -> int:
        """Duration of one encoder frame."""
        return self.subsampling * 10

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        return cls(**data)
