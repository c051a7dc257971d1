"""Train the streaming Transformer-XL CTC model, report a checkpoint's greedy WER, export the inference file.

Commands (see docs/training.md; ``xlgate train`` is the same command, :mod:`streaming_model.train_cli`)::

    python -m streaming_model.train --config configs/train-cpu.toml [--resume]
    python -m streaming_model.train greedy-wer --checkpoint runs/cpu1/last.pt --manifest dev/manifests/dev.jsonl
    python -m streaming_model.train export --run runs/cpu1 --out streaming_model/assets/xlgate-en-8k.safetensors
    torchrun --nproc_per_node 8 -m streaming_model.train --config configs/train-gpu.toml

Theory of operation
-------------------
1. *Features.* Log-mels of every training utterance are computed once (2 processes) into a cache folder:
   one float16 file of all frames back to back plus an index of offsets and lengths, keyed by a hash of
   the manifest and the feature config. Global mean/std come out of the same pass and are written into
   the model's ``feat_mean``/``feat_std`` buffers before step 0.
2. *Split.* A small, stable (hash of the audio path) slice of the training manifest is held out for the
   validation curve. The dev set is never read here except by ``greedy-wer``, which only reports.
3. *Tokens.* A SentencePiece BPE model is trained on the remaining training texts (or the character
   tokenizer is used); it is saved in the run folder so a resumed run reuses it.
4. *Batches.* Utterances are sorted by (slightly jittered) length and cut into batches under a padded
   frame budget; batch order is shuffled per epoch by a ``DistributedSampler`` over the batch list, so
   ranks under torchrun draw disjoint batches and a resumed run skips exactly the batches already seen.
5. *Step.* SpecAugment on the raw log-mels (masked regions get the global mean, i.e. 0 after the model's
   normalisation), ``model.forward`` (the chunk + memory masked pass that equals streaming), CTC in
   float32 on log-softmaxed logits, autocast bf16 on CPU and bf16/fp16 on GPU, gradient accumulation,
   clipping, AdamW with linear warmup and cosine decay.
6. *State.* Rank 0 writes ``runs/NAME/last.pt`` (model, optimizer, scheduler, scaler, step, epoch,
   position in the epoch, every RNG) every ``checkpoint_every_s`` seconds and when SIGTERM/SIGINT asks
   the run to stop; ``log.jsonl`` and ``curve.png`` after every evaluation.

Dimension legend: B batch, T feature frames, T' encoder frames, D mel bins, V vocabulary, U target tokens.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import platform
import random
import signal
import sys
import time
import tomllib
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DistributedSampler

from streaming_model.checkpoint import load_checkpoint, save_checkpoint
from streaming_model.config import ModelConfig
from streaming_model.data.manifest import Utterance, read_manifest, resolve_audio
from streaming_model.decoding import GreedyDecoder
from streaming_model.features import Fbank, FbankConfig, compute_fbank
from streaming_model.model import StreamingTransformerXL
from streaming_model.scoring import score_pairs
from streaming_model.tokenizer import (
    BLANK_ID,
    CharTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    normalise_text,
    tokenizer_from_dict,
)

FRAME_S = 0.01  # feature hop
MAX_EXPORT_BYTES = 16 * 1024 * 1024
CHECKPOINT_NAME = "last.pt"
BEST_NAME = "best.pt"


# ----------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Everything a run needs. TOML sections are for readability; keys are unique across sections."""

    # [run]
    name: str = "cpu1"
    runs_dir: str = "runs"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 on CPU, bf16 or fp16 on GPU) | bf16 | fp16 | fp32
    threads: int = 2  # torch intra-op threads on CPU
    init_from: str = ""  # warm start: an exported checkpoint (.safetensors) whose weights and tokenizer a new run starts from
    # [data]
    train_manifest: str = "data/train/manifest.jsonl"
    cache_dir: str = "data/train/fbank-cache"
    cache_workers: int = 2
    max_duration_s: float = 20.0
    max_frames_per_batch: int = 12000  # padded feature frames (10 ms) per micro-batch
    max_utts_per_batch: int = 128
    holdout_utts: int = 200  # held-out slice of the training manifest for the validation curve
    # [tokenizer]
    tokenizer: str = "sentencepiece"  # sentencepiece | char
    sp_vocab_size: int = 256
    # [optim]
    lr: float = 1.5e-3
    weight_decay: float = 0.01
    warmup_steps: int = 400
    total_steps: int = 6000
    min_lr_ratio: float = 0.02
    grad_clip: float = 5.0
    accum_steps: int = 1
    # [augment]
    specaug: bool = True
    specaug_start_step: int = 300  # masks slow down the very first steps for little gain
    freq_masks: int = 2
    freq_mask_max_bins: int = 10
    time_masks_per_s: float = 0.4
    time_mask_max_s: float = 0.3
    max_time_masks: int = 8
    # [log]
    log_every_steps: int = 20
    eval_every_steps: int = 250
    checkpoint_every_s: float = 300.0
    # [model] (ModelConfig fields other than vocab_size, which the tokenizer sets)
    model: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.tokenizer not in ("sentencepiece", "char"):
            raise ValueError(f"tokenizer must be 'sentencepiece' or 'char', got {self.tokenizer!r}")
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise ValueError(f"precision must be auto, bf16, fp16 or fp32, got {self.precision!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if "vocab_size" in self.model:
            raise ValueError("[model] vocab_size is set by the tokenizer; remove it")
        if self.accum_steps < 1 or self.total_steps < 1 or self.warmup_steps < 0:
            raise ValueError("accum_steps and total_steps must be >= 1, warmup_steps >= 0")

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    @classmethod
    def from_toml(cls, path: str | Path) -> TrainConfig:
        """Read a config file: tables ``run``, ``data``, ``tokenizer``, ``optim``, ``augment``, ``log``, ``model``."""
        with open(path, "rb") as f:
            raw = tomllib.load(f)
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)} - {"model"}
        flat: dict[str, Any] = {"model": dict(raw.get("model", {}))}
        for section, values in raw.items():
            if section == "model":
                continue
            if not isinstance(values, dict):
                raise ValueError(f"top-level key {section!r}: expected a table like [run] or [data]")
            for key, value in values.items():
                if key not in known:
                    raise ValueError(f"unknown training config key [{section}] {key}")
                if key in flat:
                    raise ValueError(f"training config key {key!r} appears twice")
                flat[key] = value
        return cls(**flat)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------------
# Feature cache


@dataclass(slots=True)
class FeatureCache:
    """All frames of a manifest in one float16 array (N_frames, D) with per-utterance offsets."""

    features: np.ndarray  # (N_frames, D) float16, memory-mapped
    offsets: np.ndarray  # (U,) int64
    lengths: np.ndarray  # (U,) int64 feature frames
    mean: np.ndarray  # (D,) float32
    std: np.ndarray  # (D,) float32

    def get(self, index: int) -> np.ndarray:
        start = int(self.offsets[index])
        return self.features[start:start + int(self.lengths[index])]


def _cache_key(manifest_path: Path, fbank: FbankConfig) -> str:
    digest = hashlib.sha256(manifest_path.read_bytes())
    digest.update(json.dumps(fbank.to_dict(), sort_keys=True).encode())
    return digest.hexdigest()[:16]


def _fbank_worker(job: tuple[list[str], dict[str, Any]]) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Log-mels of a few files (runs in a pool process): float16 arrays, plus float64 sum and sum of squares."""
    import soundfile as sf

    torch.set_num_threads(1)
    paths, fbank_dict = job
    cfg = FbankConfig(**fbank_dict)
    module = Fbank(cfg)
    feats, total, total_sq = [], np.zeros(cfg.n_mels), np.zeros(cfg.n_mels)
    for path in paths:
        samples, rate = sf.read(path, dtype="float32", always_2d=False)
        if rate != cfg.sample_rate_hz:
            raise ValueError(f"{path}: sample rate {rate} Hz, expected {cfg.sample_rate_hz} Hz")
        if samples.ndim != 1:
            samples = samples.mean(axis=1)
        f = compute_fbank(samples, cfg, module).numpy()  # (T, D)
        total += f.sum(axis=0, dtype=np.float64)
        total_sq += np.square(f, dtype=np.float64).sum(axis=0)
        feats.append(f.astype(np.float16))
    return feats, total, total_sq


def build_feature_cache(manifest_path: str | Path, utterances: Sequence[Utterance], *, cache_root: str | Path,
                        fbank: FbankConfig, workers: int, progress: bool = True) -> FeatureCache:
    """Compute (or reuse) the features of every utterance of a manifest, in manifest order."""
    from tqdm import tqdm

    manifest_path = Path(manifest_path)
    folder = Path(cache_root) / _cache_key(manifest_path, fbank)
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        paths = [str(resolve_audio(manifest_path, u)) for u in utterances]
        jobs = [(paths[i:i + 32], fbank.to_dict()) for i in range(0, len(paths), 32)]
        lengths: list[int] = []
        total, total_sq = np.zeros(fbank.n_mels), np.zeros(fbank.n_mels)
        data_path = folder / "features.f16"
        bar = tqdm(total=len(paths), desc="fbank cache", unit="utt", disable=not progress, mininterval=2.0)
        with open(data_path, "wb") as out:
            if workers > 1:
                ctx = multiprocessing.get_context("spawn")  # fork after torch's thread pools start is unsafe
                with ctx.Pool(workers) as pool:
                    results: Iterator[Any] = pool.imap(_fbank_worker, jobs)
                    for feats, s, sq in results:
                        _append_features(out, feats, lengths)
                        total, total_sq = total + s, total_sq + sq
                        bar.update(len(feats))
            else:
                for job in jobs:
                    feats, s, sq = _fbank_worker(job)
                    _append_features(out, feats, lengths)
                    total, total_sq = total + s, total_sq + sq
                    bar.update(len(feats))
        bar.close()
        n = max(sum(lengths), 1)
        mean = total / n
        std = np.sqrt(np.maximum(total_sq / n - mean**2, 1e-8))
        np.save(folder / "lengths.npy", np.asarray(lengths, dtype=np.int64))
        meta = {"manifest": str(manifest_path), "utterances": len(lengths), "frames": int(sum(lengths)),
                "n_mels": fbank.n_mels, "mean": mean.tolist(), "std": std.tolist(),
                "fbank": fbank.to_dict()}
        tmp = meta_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, meta_path)  # the marker that the cache is complete
    meta = json.loads(meta_path.read_text())
    lengths_arr = np.load(folder / "lengths.npy")
    if len(lengths_arr) != len(utterances):
        raise RuntimeError(f"feature cache {folder} has {len(lengths_arr)} utterances, manifest {len(utterances)}")
    offsets = np.concatenate([[0], np.cumsum(lengths_arr)[:-1]]).astype(np.int64)
    total_frames = int(lengths_arr.sum())
    features = (np.memmap(folder / "features.f16", dtype=np.float16, mode="r", shape=(total_frames, meta["n_mels"]))
                if total_frames else np.zeros((0, meta["n_mels"]), dtype=np.float16))
    return FeatureCache(features=features, offsets=offsets, lengths=lengths_arr,
                        mean=np.asarray(meta["mean"], dtype=np.float32), std=np.asarray(meta["std"], dtype=np.float32))


def _append_features(out: Any, feats: list[np.ndarray], lengths: list[int]) -> None:
    for f in feats:
        out.write(np.ascontiguousarray(f, dtype=np.float16).tobytes())
        lengths.append(int(f.shape[0]))


# ----------------------------------------------------------------------------------------------------
# Tokenizer


def train_sentencepiece(texts: Sequence[str], *, vocab_size: int) -> SentencePieceTokenizer:
    """Train a BPE model whose ids fit :class:`SentencePieceTokenizer` (our id = sentencepiece id + 1).

    sentencepiece id 0 is ``<unk>`` (our id 1): with every letter and the apostrophe required, normalised
    text never produces it. bos/eos/pad are disabled and byte fallback is off, so every other id is a
    real piece the CTC head can emit.
    """
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([normalise_text(t) for t in texts if normalise_text(t)]),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=1.0,
        required_chars="abcdefghijklmnopqrstuvwxyz'",
        byte_fallback=False,
        unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
        normalization_rule_name="identity",  # normalise_text already ran; keep the alphabet as is
        split_digits=False,
        max_sentence_length=4096,
        num_threads=1,
        minloglevel=2,
    )
    return SentencePieceTokenizer(model.getvalue())


def make_tokenizer(cfg: TrainConfig, texts: Sequence[str], run_dir: Path, *, is_writer: bool) -> Tokenizer:
    """The run's tokenizer: reuse ``run_dir/tokenizer.json`` if present, else build (rank 0) and save it."""
    path = run_dir / "tokenizer.json"
    if path.is_file():
        return tokenizer_from_dict(json.loads(path.read_text()))
    tok: Tokenizer = (train_sentencepiece(texts, vocab_size=cfg.sp_vocab_size) if cfg.tokenizer == "sentencepiece"
                      else CharTokenizer())
    if is_writer:
        run_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(tok.to_dict()))
    return tok


# ----------------------------------------------------------------------------------------------------
# Batching and augmentation


def holdout_mask(utterances: Sequence[Utterance], count: int) -> np.ndarray:
    """Stable held-out choice: the ``count`` utterances with the smallest CRC32 of their audio path."""
    mask = np.zeros(len(utterances), dtype=bool)
    if count > 0 and len(utterances) > 1:
        keys = np.array([zlib.crc32(u.audio.encode()) for u in utterances], dtype=np.int64)
        mask[np.argsort(keys, kind="stable")[:min(count, len(utterances) // 2)]] = True
    return mask


def make_batches(lengths: np.ndarray, indices: np.ndarray, *, max_frames: int, max_utts: int,
                 rng: np.random.Generator | None) -> list[list[int]]:
    """Cut length-sorted utterances into batches whose padded size stays under ``max_frames``.

    With an ``rng`` lengths are jittered by up to 10 % before sorting so batches differ between epochs.
    """
    lens = lengths[indices].astype(np.float64)
    if rng is not None:
        lens = lens * rng.uniform(0.95, 1.05, size=lens.shape)
    order = indices[np.argsort(lens, kind="stable")]
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        n = int(lengths[i])
        if current and (max(longest, n) * (len(current) + 1) > max_frames or len(current) >= max_utts):
            batches.append(current)
            current, longest = [], 0
        current.append(int(i))
        longest = max(longest, n)
    if current:
        batches.append(current)
    return batches


def collate(cache: FeatureCache, batch: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded float32 features (B, T, D) and lengths (B,)."""
    lengths = torch.tensor([int(cache.lengths[i]) for i in batch], dtype=torch.int64)
    feats = torch.zeros(len(batch), int(lengths.max()), cache.features.shape[1])
    for row, i in enumerate(batch):
        feats[row, :lengths[row]] = torch.from_numpy(np.asarray(cache.get(i), dtype=np.float32))
    return feats, lengths


def spec_augment(feats: torch.Tensor, lengths: torch.Tensor, *, fill: torch.Tensor, freq_masks: int,
                 freq_mask_max_bins: int, time_masks_per_s: float, time_mask_max_s: float,
                 max_time_masks: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """SpecAugment (Park et al. 2019) frequency and adaptive time masks; returns a new (B, T, D) tensor.

    Masked cells take ``fill`` (D,), the global feature mean, so they read as 0 after normalisation. The
    number of time masks grows with the utterance's duration (adaptive masking), capped at ``max_time_masks``.
    """
    out = feats.clone()
    b, _, d = feats.shape
    max_t = max(1, round(time_mask_max_s / FRAME_S))

    def randint(high: int) -> int:
        return int(torch.randint(0, max(high, 1), (1,), generator=generator))

    for row in range(b):
        n = int(lengths[row])
        for _ in range(freq_masks):
            width = randint(freq_mask_max_bins + 1)
            start = randint(d - width + 1)
            out[row, :n, start:start + width] = fill[start:start + width]
        count = min(max_time_masks, int(time_masks_per_s * n * FRAME_S))
        for _ in range(count):
            width = randint(min(max_t, n // 10) + 1)
            start = randint(n - width + 1)
            out[row, start:start + width] = fill
    return out


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``lr * min_lr_ratio`` at ``total_steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.total_steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def ctc_feasible(num_frames: int, targets: Sequence[int]) -> bool:
    """Whether CTC can align: encoder frames must cover the tokens plus a blank between each repeat."""
    repeats = sum(1 for a, b in itertools.pairwise(targets) if a == b)
    out_frames = -(-num_frames // 4)
    return 0 < len(targets) and len(targets) + repeats <= out_frames


# ----------------------------------------------------------------------------------------------------
# Devices, precision, distributed


@dataclass(slots=True)
class Runtime:
    device: torch.device
    autocast_dtype: torch.dtype | None
    use_scaler: bool
    rank: int = 0
    world_size: int = 1

    @property
    def is_writer(self) -> bool:
        return self.rank == 0


def setup_runtime(cfg: TrainConfig) -> Runtime:
    """Pick the device and precision; join the process group when started by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    rank = 0
    if world_size > 1:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        rank = dist.get_rank()
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        device = torch.device("cpu")
        torch.set_num_threads(cfg.threads)
    precision = cfg.precision
    if precision == "auto":
        if use_cuda:
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "bf16" if cpu_has_fast_bf16() else "fp32"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]
    if dtype is torch.float16 and not use_cuda:
        raise ValueError("fp16 autocast is for GPUs; use bf16 or fp32 on CPU")
    return Runtime(device=device, autocast_dtype=dtype, use_scaler=dtype is torch.float16,
                   rank=rank, world_size=world_size)


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX512-BF16 or AMX).

    Without them oneDNN emulates bf16 and autocast is far slower than fp32: on the AVX2-only EPYC of the
    shared development machine a 3200x256x1024 matmul took 1.5 s in bf16 against 46 ms in fp32, while on
    an AVX512-BF16 EPYC bf16 was 2.2x faster than fp32 (research/cpu-training-notes.md).
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast(rt: Runtime) -> Any:
    if rt.autocast_dtype is None:
        return torch.autocast(rt.device.type, enabled=False)
    return torch.autocast(rt.device.type, dtype=rt.autocast_dtype)


# ----------------------------------------------------------------------------------------------------
# Evaluation


def greedy_transcripts(model: StreamingTransformerXL, feats: torch.Tensor, lengths: torch.Tensor,
                       tokenizer: Tokenizer, rt: Runtime) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Greedy (best path) text per utterance through the gateway's :class:`GreedyDecoder`.

    Returns the texts and the float32 log-probabilities (B, T', V) with output lengths (B,).
    """
    with torch.no_grad(), autocast(rt):
        logits, out_lengths = model(feats.to(rt.device), lengths.to(rt.device))
    log_probs = logits.float().log_softmax(-1).cpu()
    out_lengths = out_lengths.cpu()
    texts = []
    for row in range(log_probs.shape[0]):
        decoder = GreedyDecoder(tokenizer)
        decoder.accept(log_probs[row, :int(out_lengths[row])].numpy())
        texts.append(decoder.finalize().text)
    return texts, log_probs, out_lengths


def error_rates(refs: Sequence[str], hyps: Sequence[str]) -> tuple[float, float]:
    """Corpus WER and CER (:func:`streaming_model.scoring.score_pairs`); NaN when no reference has a word.

    Pairs whose normalised reference is empty are left out, so a silent utterance cannot make the rate
    undefined.
    """
    counts = score_pairs(zip(refs, hyps, strict=True), skip_empty_refs=True)
    wer, cer = counts.wer, counts.cer
    return (float("nan") if wer is None else wer), (float("nan") if cer is None else cer)


def evaluate_cached(model: StreamingTransformerXL, cache: FeatureCache, indices: np.ndarray, texts: Sequence[str],
                    tokenizer: Tokenizer, rt: Runtime, *, max_frames: int) -> dict[str, Any]:
    """Greedy WER/CER and per-token CTC loss on cached utterances (the held-out training slice)."""
    was_training = model.training
    model.eval()
    refs, hyps = [], []
    loss_sum, token_sum = 0.0, 0
    for batch in make_batches(cache.lengths, indices, max_frames=max_frames, max_utts=256, rng=None):
        feats, lengths = collate(cache, batch)
        out, log_probs, out_lengths = greedy_transcripts(model, feats, lengths, tokenizer, rt)
        targets = [tokenizer.encode(texts[i]) for i in batch]
        flat = torch.tensor([t for tt in targets for t in tt], dtype=torch.int64)
        tlen = torch.tensor([len(t) for t in targets], dtype=torch.int64)
        loss = F.ctc_loss(log_probs.transpose(0, 1), flat, out_lengths, tlen, blank=BLANK_ID,
                          reduction="sum", zero_infinity=True)
        loss_sum += float(loss)
        token_sum += int(tlen.sum())
        refs.extend(texts[i] for i in batch)
        hyps.extend(out)
    model.train(was_training)
    wer, cer = error_rates(refs, hyps)
    return {"wer": wer, "cer": cer, "loss_per_token": loss_sum / max(token_sum, 1), "utterances": len(refs),
            "examples": [{"ref": r, "hyp": h} for r, h in list(zip(refs, hyps, strict=True))[:3]]}


# ----------------------------------------------------------------------------------------------------
# Logging


class RunLog:
    """``log.jsonl`` (one record a line) and ``curve.png`` in the run folder; rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.path = run_dir / "log.jsonl"
        self.png = run_dir / "curve.png"
        self.enabled = enabled

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def records(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def plot(self) -> None:
        if not self.enabled:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        recs = self.records()
        train = [r for r in recs if r.get("kind") == "train"]
        evals = [r for r in recs if r.get("kind") == "eval"]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        if train:
            ax1.plot([r["step"] for r in train], [r["loss"] for r in train], label="train CTC loss / token")
        if evals:
            ax1.plot([r["step"] for r in evals], [r["loss_per_token"] for r in evals], "o-", label="held-out")
            ax2.plot([r["step"] for r in evals], [100 * r["wer"] for r in evals], "o-", label="WER %")
            ax2.plot([r["step"] for r in evals], [100 * r["cer"] for r in evals], "s-", label="CER %")
        ax1.set_xlabel("optimizer step")
        ax1.set_yscale("log")
        ax1.legend()
        ax2.set_xlabel("optimizer step")
        ax2.set_title("greedy, held-out slice of the training data")
        ax2.legend()
        fig.tight_layout()
        tmp = self.png.with_name("curve.tmp.png")
        fig.savefig(tmp, dpi=90)
        plt.close(fig)
        os.replace(tmp, self.png)


# ----------------------------------------------------------------------------------------------------
# Training


@dataclass(slots=True)
class Progress:
    """Where the run is: ``step`` optimizer steps done; the next micro-batch is ``batch`` of ``epoch``."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    audio_s: float = 0.0  # seconds of audio trained on (all ranks)
    best_wer: float = float("inf")


class _StopFlag:
    """Set by SIGTERM/SIGINT; the loop saves a checkpoint and leaves at the next step boundary."""

    def __init__(self) -> None:
        self.requested = False

    def install(self) -> None:
        if threading_is_main():
            signal.signal(signal.SIGTERM, self._handle)
            signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(path: Path, *, model: StreamingTransformerXL, optimizer: torch.optim.Optimizer,
                        scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
                        progress: Progress, cfg: TrainConfig, tokenizer: Tokenizer, model_config: ModelConfig,
                        fbank: FbankConfig, train_hours: float) -> None:
    """Atomically write everything needed to resume (or to export)."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "progress": dataclasses.asdict(progress),
        "rng": _rng_state(),
        "train_config": cfg.to_dict(),
        "model_config": model_config.to_dict(),
        "feature_config": fbank.to_dict(),
        "tokenizer": tokenizer.to_dict(),
        "train_hours": train_hours,
        "hardware": hardware_description(),
        "saved_at": time.time(),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_training_state(path: str | Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


def model_from_state(state: dict[str, Any]) -> tuple[StreamingTransformerXL, FbankConfig, Tokenizer]:
    model = StreamingTransformerXL(ModelConfig.from_dict(state["model_config"]))
    model.load_state_dict(state["model"])
    return model, FbankConfig(**state["feature_config"]), tokenizer_from_dict(state["tokenizer"])


def hardware_description() -> str:
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        return f"{n}x {torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"CPU {cpu} ({torch.backends.cpu.get_cpu_capability()}, bf16 matmul "
            f"{'yes' if cpu_has_fast_bf16() else 'no'}), {torch.get_num_threads()} threads, torch {torch.__version__}")


def train(cfg: TrainConfig, *, resume: bool = False, stop_at_step: int | None = None,
          progress_bar: bool = True) -> Progress:
    """Run (or resume) training until ``total_steps``, a stop signal, or ``stop_at_step``.

    Returns the final :class:`Progress`. ``stop_at_step`` saves and returns early as if interrupted.

    Raises:
        FileExistsError: the run folder has a checkpoint and ``resume`` is false.
        FileNotFoundError: ``resume`` is true and there is no checkpoint.
    """
    from tqdm import tqdm

    rt = setup_runtime(cfg)
    run_dir = cfg.run_dir
    ckpt_path = run_dir / CHECKPOINT_NAME
    if resume and not ckpt_path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
    if not resume and ckpt_path.is_file():
        raise FileExistsError(f"{ckpt_path} exists: pass --resume, or choose another [run] name")
    if rt.is_writer:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    random.seed(cfg.seed + rt.rank)
    np.random.seed(cfg.seed + rt.rank)
    torch.manual_seed(cfg.seed + rt.rank)

    # Data: features (rank 0 builds the cache, the others wait and read it).
    fbank = FbankConfig(n_mels=ModelConfig(**cfg.model).n_mels)
    utterances = read_manifest(cfg.train_manifest)
    if rt.is_writer:
        build_feature_cache(cfg.train_manifest, utterances, cache_root=cfg.cache_dir, fbank=fbank,
                            workers=cfg.cache_workers, progress=progress_bar)
    _barrier(rt)
    cache = build_feature_cache(cfg.train_manifest, utterances, cache_root=cfg.cache_dir, fbank=fbank,
                                workers=1, progress=False)
    texts = [normalise_text(u.text) for u in utterances]
    held = holdout_mask(utterances, cfg.holdout_utts)
    max_frames = int(cfg.max_duration_s / FRAME_S)
    warm = None
    if cfg.init_from and not resume:
        # Warm start: the new run adopts the checkpoint's tokenizer (reused like a resumed run's) and weights.
        warm = load_checkpoint(cfg.init_from)
        if rt.is_writer and not (run_dir / "tokenizer.json").is_file():
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "tokenizer.json").write_text(json.dumps(warm.tokenizer.to_dict()))
        _barrier(rt)
    tokenizer = make_tokenizer(cfg, [t for t, h in zip(texts, held, strict=True) if not h], run_dir,
                               is_writer=rt.is_writer)
    _barrier(rt)
    if not rt.is_writer:
        tokenizer = make_tokenizer(cfg, [], run_dir, is_writer=False)
    targets = [tokenizer.encode(t) for t in texts]
    usable = np.array([not h and int(n) <= max_frames and ctc_feasible(int(n), tg)
                       for h, n, tg in zip(held, cache.lengths, targets, strict=True)])
    train_idx = np.flatnonzero(usable)
    held_idx = np.flatnonzero(held)
    train_hours = float(cache.lengths[train_idx].sum()) * FRAME_S / 3600

    # Model and optimiser.
    model_config = ModelConfig(**{**cfg.model, "vocab_size": tokenizer.vocab_size})
    model = StreamingTransformerXL(model_config)
    with torch.no_grad():
        model.feat_mean.copy_(torch.from_numpy(cache.mean))
        model.feat_std.copy_(torch.from_numpy(cache.std))
    if warm is not None:
        if dataclasses.replace(warm.model.config, dropout=model_config.dropout) != model_config:  # geometry
            raise ValueError(f"init_from {cfg.init_from}: its geometry {warm.model.config} differs from this "
                             f"run's {model_config}")
        model.load_state_dict(warm.model.state_dict())  # its feature statistics come with it
    model.to(rt.device)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98),
                                  eps=1e-8, fused=rt.device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, cfg) / cfg.lr)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.use_scaler)
    progress = Progress()
    log = RunLog(run_dir, enabled=rt.is_writer)
    if resume:
        state = load_training_state(ckpt_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        progress = Progress(**state["progress"])
        _set_rng_state(state["rng"])
        if rt.rank:
            torch.manual_seed(cfg.seed + rt.rank + progress.step)
    ddp_model: torch.nn.Module = model
    if rt.world_size > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    fill = model.feat_mean.detach().cpu()

    if rt.is_writer:
        print(f"[train] run {run_dir}: {len(train_idx)} utterances ({train_hours:.2f} h) for training, "
              f"{len(held_idx)} held out, {int((~usable & ~held).sum())} dropped (too long or CTC-infeasible); "
              f"{model.num_parameters() / 1e6:.2f}M parameters, vocab {tokenizer.vocab_size}, device {rt.device}, "
              f"autocast {rt.autocast_dtype}, world size {rt.world_size}; resuming at step {progress.step}",
              flush=True)
    stop = _StopFlag()
    stop.install()

    def save() -> None:
        if rt.is_writer:
            save_training_state(ckpt_path, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                                progress=progress, cfg=cfg, tokenizer=tokenizer, model_config=model_config,
                                fbank=fbank, train_hours=train_hours)

    def evaluate_and_log() -> None:
        if not rt.is_writer or not len(held_idx):
            return
        t0 = time.monotonic()
        result = evaluate_cached(model, cache, held_idx, texts, tokenizer, rt, max_frames=cfg.max_frames_per_batch)
        log.write({"kind": "eval", "step": progress.step, "audio_h": progress.audio_s / 3600,
                   "eval_s": time.monotonic() - t0, **result})
        log.plot()
        if result["wer"] < progress.best_wer:
            progress.best_wer = result["wer"]
            torch.save({"model": model.state_dict(), "model_config": model_config.to_dict(),
                        "feature_config": fbank.to_dict(), "tokenizer": tokenizer.to_dict(),
                        "progress": dataclasses.asdict(progress), "train_hours": train_hours,
                        "hardware": hardware_description()}, run_dir / BEST_NAME)
        tqdm.write(f"[eval] step {progress.step}: held-out WER {100 * result['wer']:.1f}% "
                   f"CER {100 * result['cer']:.1f}% loss/token {result['loss_per_token']:.3f}; "
                   f"e.g. {result['examples'][0]['hyp']!r} for {result['examples'][0]['ref']!r}")

    bar = tqdm(total=cfg.total_steps, initial=progress.step, desc=f"train {cfg.name}", unit="step",
               disable=not (progress_bar and rt.is_writer), mininterval=1.0 if sys.stderr.isatty() else 30.0,
               dynamic_ncols=True)
    ddp_model.train()
    last_save = time.monotonic()
    window_t0, window_audio, window_loss, window_tokens = time.monotonic(), 0.0, 0.0, 0
    micro = 0
    finished = False
    while not finished:
        batches = make_batches(cache.lengths, train_idx, max_frames=cfg.max_frames_per_batch,
                               max_utts=cfg.max_utts_per_batch,
                               rng=np.random.default_rng([cfg.seed, progress.epoch]))
        sampler = DistributedSampler(range(len(batches)), num_replicas=rt.world_size, rank=rt.rank,
                                     shuffle=True, seed=cfg.seed, drop_last=True)
        sampler.set_epoch(progress.epoch)
        order = list(sampler)
        if not order:
            raise ValueError(f"{len(batches)} batches cannot feed {rt.world_size} ranks; lower max_frames_per_batch")
        while progress.batch < len(order):
            batch = batches[order[progress.batch]]
            progress.batch += 1
            feats, lengths = collate(cache, batch)
            if cfg.specaug and progress.step >= cfg.specaug_start_step:
                feats = spec_augment(feats, lengths, fill=fill, freq_masks=cfg.freq_masks,
                                     freq_mask_max_bins=cfg.freq_mask_max_bins, time_masks_per_s=cfg.time_masks_per_s,
                                     time_mask_max_s=cfg.time_mask_max_s, max_time_masks=cfg.max_time_masks)
            tgt = [targets[i] for i in batch]
            flat = torch.tensor([t for tt in tgt for t in tt], dtype=torch.int64)
            tlen = torch.tensor([len(t) for t in tgt], dtype=torch.int64)
            micro += 1
            sync = micro % cfg.accum_steps == 0
            with (ddp_model.no_sync() if (rt.world_size > 1 and not sync) else _nullcontext()):
                with autocast(rt):
                    logits, out_lengths = ddp_model(feats.to(rt.device, non_blocking=True), lengths.to(rt.device))
                log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # (T', B, V)
                loss_sum = F.ctc_loss(log_probs, flat.to(rt.device), out_lengths, tlen.to(rt.device),
                                      blank=BLANK_ID, reduction="sum", zero_infinity=True)
                n_tokens = int(tlen.sum())
                scaler.scale(loss_sum / n_tokens / cfg.accum_steps).backward()
            window_loss += float(loss_sum.detach())
            window_tokens += n_tokens
            window_audio += float(lengths.sum()) * FRAME_S * rt.world_size
            progress.audio_s += float(lengths.sum()) * FRAME_S * rt.world_size
            if not sync:
                continue
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            progress.step += 1
            bar.update(1)
            if progress.step % cfg.log_every_steps == 0:
                elapsed = time.monotonic() - window_t0
                record = {"kind": "train", "step": progress.step, "epoch": progress.epoch,
                          "loss": window_loss / max(window_tokens, 1), "lr": scheduler.get_last_lr()[0],
                          "grad_norm": float(grad_norm), "audio_s_per_s": window_audio / max(elapsed, 1e-9),
                          "audio_h": progress.audio_s / 3600, "time": time.time()}
                log.write(record)
                bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}",
                                audio_x=f"{record['audio_s_per_s']:.0f}", refresh=False)
                if not sys.stderr.isatty() and rt.is_writer:
                    print(f"[train] step {progress.step} epoch {progress.epoch} loss/token {record['loss']:.3f} "
                          f"lr {record['lr']:.2e} {record['audio_s_per_s']:.1f} s audio/s", flush=True)
                window_t0, window_audio, window_loss, window_tokens = time.monotonic(), 0.0, 0.0, 0
            if progress.step % cfg.eval_every_steps == 0 or progress.step == cfg.total_steps:
                evaluate_and_log()
                window_t0 = time.monotonic()  # evaluation time is not training throughput
            stop_now = _any_rank(rt, stop.requested)
            if progress.step >= cfg.total_steps or stop_now or progress.step == stop_at_step:
                finished = True
                break
            if time.monotonic() - last_save >= cfg.checkpoint_every_s:
                save()
                last_save = time.monotonic()
        else:
            progress.epoch += 1
            progress.batch = 0
    bar.close()
    save()
    if rt.is_writer:
        print(f"[train] saved {ckpt_path} at step {progress.step}" + (" (stop requested)" if stop.requested else ""),
              flush=True)
    if rt.world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
    return progress


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _barrier(rt: Runtime) -> None:
    if rt.world_size > 1:
        dist.barrier()


def _any_rank(rt: Runtime, flag: bool) -> bool:
    if rt.world_size == 1:
        return flag
    t = torch.tensor([1 if flag else 0], device=rt.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


# ----------------------------------------------------------------------------------------------------
# Evaluate and export


def load_any_checkpoint(path: str | Path) -> tuple[StreamingTransformerXL, FbankConfig, Tokenizer, dict[str, Any]]:
    """A model from an inference ``.safetensors`` file or a training ``.pt`` state (last.pt / best.pt)."""
    p = Path(path)
    if p.suffix == ".safetensors":
        loaded = load_checkpoint(p)
        return loaded.model, loaded.features, loaded.tokenizer, loaded.info
    state = load_training_state(p)
    model, fbank, tokenizer = model_from_state(state)
    return model.eval(), fbank, tokenizer, {"progress": state.get("progress"), "train_hours": state.get("train_hours")}


def evaluate_manifest(checkpoint: str | Path, manifest: str | Path, *, threads: int = 2,
                      max_frames_per_batch: int = 20000, precision: str = "fp32",
                      progress_bar: bool = True) -> dict[str, Any]:
    """Greedy WER/CER of a checkpoint on a manifest, features computed from the audio (for reporting)."""
    import soundfile as sf
    from tqdm import tqdm

    torch.set_num_threads(threads)
    model, fbank, tokenizer, _ = load_any_checkpoint(checkpoint)
    dtype = {"bf16": torch.bfloat16, "fp32": None}[precision]
    rt = Runtime(device=torch.device("cpu"), autocast_dtype=dtype, use_scaler=False)
    utterances = read_manifest(manifest)
    module = Fbank(fbank)
    feats_list = []
    for u in tqdm(utterances, desc="features", disable=not progress_bar, mininterval=2.0):
        samples, rate = sf.read(str(resolve_audio(manifest, u)), dtype="float32")
        if rate != fbank.sample_rate_hz:
            raise ValueError(f"{u.audio}: sample rate {rate} Hz, expected {fbank.sample_rate_hz} Hz")
        feats_list.append(compute_fbank(samples, fbank, module))
    lengths = np.array([f.shape[0] for f in feats_list], dtype=np.int64)
    refs, hyps = [], []
    for batch in make_batches(lengths, np.arange(len(utterances)), max_frames=max_frames_per_batch, max_utts=256,
                              rng=None):
        lens = torch.from_numpy(lengths[batch])
        feats = torch.zeros(len(batch), int(lens.max()), fbank.n_mels)
        for row, i in enumerate(batch):
            feats[row, :lens[row]] = feats_list[i]
        out, _, _ = greedy_transcripts(model, feats, lens, tokenizer, rt)
        refs.extend(utterances[i].text for i in batch)
        hyps.extend(out)
    wer, cer = error_rates(refs, hyps)
    return {"checkpoint": str(checkpoint), "manifest": str(manifest), "utterances": len(refs),
            "audio_h": float(lengths.sum()) * FRAME_S / 3600, "wer": wer, "cer": cer,
            "examples": [{"ref": r, "hyp": h} for r, h in list(zip(refs, hyps, strict=True))[:5]]}


def export_run(run_dir: str | Path, out: str | Path, *, which: str = "last", dev_wer: float | None = None) -> Path:
    """Write the inference checkpoint (float16 safetensors, ``trained=True``) from a run's checkpoint.

    Raises:
        FileNotFoundError: the run has no such checkpoint.
        ValueError: the file would exceed 16 MiB.
    """
    run = Path(run_dir)
    src = run / (CHECKPOINT_NAME if which == "last" else BEST_NAME)
    if not src.is_file():
        raise FileNotFoundError(f"no {which} checkpoint at {src}")
    state = load_training_state(src)
    model, fbank, tokenizer = model_from_state(state)
    log = RunLog(run, enabled=False).records()
    evals = [r for r in log if r.get("kind") == "eval"]
    speeds = [r["audio_s_per_s"] for r in log if r.get("kind") == "train"]
    dev_path = run / "dev_eval.json"
    if dev_wer is None and dev_path.is_file():
        dev = json.loads(dev_path.read_text())
        dev_wer = dev.get("wer") if Path(dev.get("checkpoint", "")).resolve() == src.resolve() else None
    progress = state.get("progress", {})
    info = {
        "run": run.name,
        "checkpoint": which,
        "steps": progress.get("step"),
        "epochs": progress.get("epoch"),
        "train_audio_hours": round(float(state.get("train_hours", 0.0)), 3),
        "audio_hours_seen": round(float(progress.get("audio_s", 0.0)) / 3600, 2),
        "hardware": state.get("hardware", hardware_description()),
        "train_audio_s_per_s": round(float(np.median(speeds)), 1) if speeds else None,
        "heldout_wer": evals[-1]["wer"] if evals else None,
        "dev_wer": dev_wer,
        "params": model.num_parameters(),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out_path = Path(out)
    tmp = out_path.with_name(out_path.name + ".tmp")
    save_checkpoint(tmp, model, features=fbank, tokenizer=tokenizer, trained=True, info=info, dtype=torch.float16)
    size = tmp.stat().st_size
    if size > MAX_EXPORT_BYTES:
        tmp.unlink()
        raise ValueError(f"exported checkpoint is {size} bytes, over the {MAX_EXPORT_BYTES}-byte limit")
    os.replace(tmp, out_path)
    out_path.chmod(0o644)  # a package asset, readable by whoever installs it
    return out_path


# ----------------------------------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m streaming_model.train``: the ``xlgate train`` command (:mod:`streaming_model.train_cli`)."""
    from streaming_model.train_cli import add_arguments

    parser = argparse.ArgumentParser(prog="python -m streaming_model.train",
                                     description="Train the streaming model; subcommands report on and export "
                                                 "a run (the same command as `xlgate train`).")
    add_arguments(parser)
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    return int(args.func(args, parser))


if __name__ == "__main__":
    sys.exit(main())
