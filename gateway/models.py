"""Which model the gateway serves: a checkpoint file, the bundled one, or (until one ships) an untrained one."""

from __future__ import annotations

import logging

import torch

from gateway.config import BUNDLED_MODEL
from streaming_model.checkpoint import LoadedModel, bundled_checkpoint_path, load_checkpoint

log = logging.getLogger("xlgate.model")
WEAK_MODEL_WER = 0.3


def load_model(model: str, device: str, *, warn: bool = True) -> LoadedModel:
    """The checkpoint named by ``--model``; the bundled one for ``bundled``.

    Falls back to a seeded untrained model when no bundled checkpoint exists in this build, and says so
    loudly: such a model serves the protocol but transcribes nothing useful.
    """
    if model == BUNDLED_MODEL:
        path = bundled_checkpoint_path()
        if path is None:
            return untrained_model(device, warn=warn)
        loaded = load_checkpoint(path, device=device)
    else:
        loaded = load_checkpoint(model, device=device)
    if not loaded.trained and warn:
        warn_untrained(loaded.path)
    return loaded


def untrained_model(device: str, *, warn: bool = True) -> LoadedModel:
    from streaming_model.config import ModelConfig
    from streaming_model.features import FbankConfig
    from streaming_model.model import StreamingTransformerXL
    from streaming_model.tokenizer import CharTokenizer

    torch.manual_seed(0)
    model = StreamingTransformerXL(ModelConfig()).to(device).eval()
    if warn:
        warn_untrained("untrained")
    return LoadedModel(model=model, features=FbankConfig(), tokenizer=CharTokenizer(), trained=False,
                       path="untrained")


def warn_untrained(path: str) -> None:
    bar = "!" * 78
    log.warning("%s", bar)
    log.warning("UNTRAINED MODEL (%s): transcripts will be meaningless.", path)
    log.warning("This build serves a randomly initialised model until a trained checkpoint ships.")
    log.warning("%s", bar)
