"""Checkpoints carry weights, geometry, features and tokenizer; bad files fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from streaming_model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from streaming_model.config import ModelConfig
from streaming_model.features import FbankConfig
from streaming_model.tokenizer import CharTokenizer
from tests.conftest import TINY, make_tiny_model


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_round_trip(tmp_path: Path, dtype: torch.dtype) -> None:
    model = make_tiny_model()
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, features=FbankConfig(n_mels=64), tokenizer=CharTokenizer(), trained=True,
                    info={"steps": 3}, dtype=dtype)
    loaded = load_checkpoint(path)
    assert loaded.model.config == TINY and loaded.trained and loaded.info == {"steps": 3}
    assert loaded.tokenizer.to_dict() == {"type": "char"} and loaded.features == FbankConfig()
    x = torch.randn(1, 32, 64)
    with torch.no_grad():
        a, _ = model(x, torch.tensor([32]))
        b, _ = loaded.model(x, torch.tensor([32]))
    tol = 1e-6 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)
    torch.testing.assert_close(loaded.model.feat_std, model.feat_std, atol=tol, rtol=tol)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(junk)
    # Weights that do not fit the stored geometry.
    path = tmp_path / "mismatch.safetensors"
    save_checkpoint(path, make_tiny_model(), features=FbankConfig(), tokenizer=CharTokenizer(), trained=False)
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta["model_config"] = meta["model_config"].replace('"n_layers": 2', '"n_layers": 3')
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(path)


def test_config_rejects_unknown_and_bad_fields() -> None:
    with pytest.raises(ValueError, match="unknown model config fields"):
        ModelConfig.from_dict({"n_layers": 2, "bogus": 1})
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(d_model=100, n_heads=3)
