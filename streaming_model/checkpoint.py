"""Checkpoints: safetensors weights with the model config, feature config and tokenizer in the metadata.

A checkpoint is one self-contained file; nothing is downloaded. ``save_checkpoint(..., dtype=float16)``
halves the file (the bundled model is stored so); loading casts back to float32 for CPU inference.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from streaming_model.config import ModelConfig
from streaming_model.decoding import ConfidenceCalibration
from streaming_model.features import FbankConfig
from streaming_model.model import StreamingTransformerXL
from streaming_model.tokenizer import Tokenizer, tokenizer_from_dict

FORMAT_VERSION = "1"
BUNDLED_NAME = "xlgate-en-8k.safetensors"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, malformed or incompatible."""


@dataclass(slots=True)
class LoadedModel:
    model: StreamingTransformerXL
    features: FbankConfig
    tokenizer: Tokenizer
    trained: bool
    info: dict[str, Any] = field(default_factory=dict)
    path: str = ""


def bundled_checkpoint_path() -> Path | None:
    """The checkpoint shipped in the package, or None if this build has none."""
    candidate = Path(str(resources.files("streaming_model").joinpath("assets", BUNDLED_NAME)))
    return candidate if candidate.is_file() else None


def save_checkpoint(path: str | Path, model: StreamingTransformerXL, *, features: FbankConfig,
                    tokenizer: Tokenizer, trained: bool, info: dict[str, Any] | None = None,
                    dtype: torch.dtype = torch.float32) -> None:
    """Write weights and everything needed to rebuild the model."""
    tensors = {k: v.detach().to("cpu").to(dtype if v.is_floating_point() else v.dtype).contiguous()
               for k, v in model.state_dict().items()}
    metadata = {
        "format_version": FORMAT_VERSION,
        "model_config": json.dumps(model.config.to_dict()),
        "feature_config": json.dumps(features.to_dict()),
        "tokenizer": json.dumps(tokenizer.to_dict()),
        "trained": "true" if trained else "false",
        "info": json.dumps(info or {}),
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)


def update_info(path: str | Path, updates: dict[str, Any]) -> dict[str, Any]:
    """Merge ``updates`` into a checkpoint's ``info`` in place (weights untouched); returns the new info.

    The file is rewritten next to itself and renamed over the original, so a reader never sees half of it.
    """
    p = Path(path)
    load_checkpoint(p)  # the same checks as a load: never rewrite a file we could not serve
    with safe_open(str(p), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    info = {**json.loads(meta.get("info", "{}")), **updates}
    meta["info"] = json.dumps(info)
    tmp = p.with_name(p.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(p)
    return info


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild a model from a checkpoint file, in eval mode and float32."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for a bad header
        raise CheckpointError(f"checkpoint {p} is not a readable safetensors file: {exc}") from exc
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {p} has format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION!r}")
    try:
        config = ModelConfig.from_dict(json.loads(meta["model_config"]))
        features = FbankConfig(**json.loads(meta["feature_config"]))
        tokenizer = tokenizer_from_dict(json.loads(meta["tokenizer"]))
        info = json.loads(meta.get("info", "{}"))
        if not isinstance(info, dict):
            raise ValueError(f"info: expected an object, got {type(info).__name__}")
        ConfidenceCalibration.from_info(info)
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {p} has bad metadata: {exc}") from exc
    model = StreamingTransformerXL(config)
    state = {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in tensors.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {p} does not fit its config: missing {missing}, unexpected {unexpected}")
    model.to(device).eval()
    return LoadedModel(model=model, features=features, tokenizer=tokenizer,
                       trained=meta.get("trained") == "true", info=info, path=str(p))
