"""Distillation of Whisper's full-context encoder into the streaming Transformer-XL student.

Teacher: Whisper's encoder (:mod:`streaming_model.pretrained.whisper`), full context, its absolute positions.
Student: :class:`streaming_model.model.StreamingTransformerXL` with the ``"whisper"`` front end, initialised
from the same weights (:func:`~streaming_model.pretrained.whisper.init_student`), trained with exactly the
chunk + memory mask it streams with.

What is distilled. Whisper's last block and final LayerNorm write the absolute position into every frame
(replacing the position table by its mean leaves the final states at cosine 0.1 of the true ones, while
blocks 1-3 stay at 0.70-0.75, measured on dev utterances): a streaming model cannot know a frame's
position in the utterance, so matching the final states is ill-posed. The loss matches the outputs of
the first ``distill_layers`` blocks (a scale-free distance: 1 - cosine plus the MSE relative to the
teacher's mean square), and CTC on the transcripts trains the rest and the head. The teacher's states are
computed once per utterance and cached (they are the expensive part, and need no transcript).

The student's front end is Whisper's delayed by one encoder frame (causal convolutions), so student frame
``j + 1`` is matched with teacher frame ``j``.

Commands::

    python -m streaming_model.distill cache --manifest data/train/manifest.jsonl      # features + teacher
    python -m streaming_model.distill train --config configs/distill-cpu.toml [--resume]
    python -m streaming_model.distill export --run runs/NAME --out streaming_model/assets/xlgate-en-8k.safetensors

Dimension legend: B batch, T mel frames, S encoder frames, D width, N distilled layers, V vocabulary.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import signal
import sys
import time
import tomllib
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

from streaming_model.checkpoint import load_checkpoint, save_checkpoint
from streaming_model.data.manifest import read_manifest, resolve_audio
from streaming_model.features import Fbank, compute_fbank, whisper_features
from streaming_model.model import StreamingTransformerXL
from streaming_model.pretrained.whisper import init_student, load_whisper_encoder, student_config
from streaming_model.scoring import score_pairs
from streaming_model.tokenizer import CharTokenizer

CACHE_VERSION = 1


# ----------------------------------------------------------------------------------------------- cache
@dataclass(frozen=True, slots=True)
class TeacherCache:
    """Features and teacher states of a manifest's utterances, memory-mapped.

    Files in the folder: ``features.f16`` (sum T, 80), ``teacher.f16`` (sum S, N, D), ``index.json``
    (per utterance: text, feature offset and length, state offset and length; the layers stored).
    """

    folder: Path
    features: np.ndarray
    teacher: np.ndarray
    items: list[dict[str, Any]]
    layers: list[int]

    @classmethod
    def open(cls, folder: Path) -> TeacherCache:
        index = json.loads((folder / "index.json").read_text())
        n_feat = sum(i["t"] for i in index["items"])
        n_state = sum(i["s"] for i in index["items"])
        feats = np.memmap(folder / "features.f16", dtype=np.float16, mode="r", shape=(n_feat, 80))
        teach = np.memmap(folder / "teacher.f16", dtype=np.float16, mode="r",
                          shape=(n_state, len(index["layers"]), index["d_model"]))
        return cls(folder, feats, teach, index["items"], index["layers"])


def cache_folder(manifest: Path, layers: list[int]) -> Path:
    digest = hashlib.sha256(manifest.read_bytes() + json.dumps(
        [CACHE_VERSION, layers, asdict(whisper_features())]).encode()).hexdigest()[:12]
    return manifest.parent / "teacher-cache" / digest


def build_cache(manifest: Path, layers: list[int], *, threads: int = 2) -> Path:
    """Compute (or reuse) the cache of a manifest; returns its folder."""
    folder = cache_folder(manifest, layers)
    if (folder / "index.json").exists():
        return folder
    torch.set_num_threads(threads)
    folder.mkdir(parents=True, exist_ok=True)
    utts = read_manifest(manifest)
    teacher = load_whisper_encoder()
    cfg = whisper_features()
    fbank = Fbank(cfg)
    items = []
    t0 = time.monotonic()
    with open(folder / "features.f16.tmp", "wb") as ff, open(folder / "teacher.f16.tmp", "wb") as tf:
        fo = so = 0
        for k, u in enumerate(utts):
            audio, rate = sf.read(str(resolve_audio(manifest, u)), dtype="float32")
            if rate != cfg.sample_rate_hz:
                raise ValueError(f"{u.audio}: {rate} Hz, expected {cfg.sample_rate_hz}")
            mel = compute_fbank(audio, cfg, fbank)  # (T, 80)
            with torch.no_grad():
                states = teacher(mel[None], return_layers=True)  # list of (1, S, D)
            stacked = torch.stack([states[i][0] for i in layers], dim=1)  # (S, N, D)
            ff.write(mel.numpy().astype(np.float16).tobytes())
            tf.write(stacked.numpy().astype(np.float16).tobytes())
            items.append({"text": u.text, "t": int(mel.shape[0]), "s": int(stacked.shape[0]),
                          "f_off": fo, "s_off": so, "audio": u.audio, "voice": u.voice})
            fo += mel.shape[0]
            so += stacked.shape[0]
            if k % 200 == 0:
                print(f"cache {k}/{len(utts)} {time.monotonic() - t0:.0f}s", flush=True)
    (folder / "features.f16.tmp").rename(folder / "features.f16")
    (folder / "teacher.f16.tmp").rename(folder / "teacher.f16")
    (folder / "index.json").write_text(json.dumps(
        {"items": items, "layers": layers, "d_model": teacher.config.d_model, "manifest": str(manifest)}))
    return folder


# ---------------------------------------------------------------------------------------------- config
@dataclass
class DistillConfig:
    name: str = "distill"
    manifest: str = "data/train/manifest.jsonl"
    distill_layers: list[int] = field(default_factory=lambda: [0, 1, 2])  # teacher blocks (0-based) matched
    distill_weight: float = 1.0
    ctc_weight: float = 0.3
    chunk_frames: int = 8
    mem_frames: int = 64
    dropout: float = 0.05
    lr_pretrained: float = 1e-4  # Whisper's weights: keep what the encoder knows
    lr_new: float = 1e-3  # CTC head, relative positions, u/v, fe_proj
    warmup_steps: int = 100
    max_steps: int = 3000
    batch_audio_s: float = 60.0
    weight_decay: float = 0.01
    grad_clip: float = 5.0
    threads: int = 2
    heldout: int = 100
    eval_every_steps: int = 250
    log_every_steps: int = 20
    checkpoint_every_s: float = 300.0
    seed: int = 0
    init_from: str = ""  # weights to start from instead of Whisper: a run's last.pt or a .safetensors export

    @classmethod
    def load(cls, path: Path) -> DistillConfig:
        data = tomllib.loads(path.read_text())
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
        return cls(**data)


# ---------------------------------------------------------------------------------------------- batches
def heldout_indices(cache: TeacherCache, count: int) -> set[int]:
    order = sorted(range(len(cache.items)), key=lambda i: zlib.crc32(cache.items[i]["audio"].encode()))
    return set(order[:count])


def make_batches(lengths: list[int], indices: list[int], max_frames: int, rng: random.Random) -> list[list[int]]:
    """Length-bucketed batches (by padded feature frames), shuffled."""
    order = sorted(indices, key=lambda i: lengths[i] + rng.random())
    batches, cur, longest = [], [], 0
    for i in order:
        longest2 = max(longest, lengths[i])
        if cur and longest2 * (len(cur) + 1) > max_frames:
            batches.append(cur)
            cur, longest2 = [], lengths[i]
        cur.append(i)
        longest = longest2
    if cur:
        batches.append(cur)
    rng.shuffle(batches)
    return batches


def collate(cache: TeacherCache, batch: list[int], tok: CharTokenizer) -> dict[str, torch.Tensor]:
    items = [cache.items[i] for i in batch]
    t_max = max(i["t"] for i in items)
    s_max = max(i["s"] for i in items)
    n, d = cache.teacher.shape[1:]
    feats = torch.zeros(len(items), t_max, 80)
    teach = torch.zeros(len(items), s_max, n, d)
    for b, it in enumerate(items):
        feats[b, :it["t"]] = torch.from_numpy(cache.features[it["f_off"]:it["f_off"] + it["t"]].astype(np.float32))
        teach[b, :it["s"]] = torch.from_numpy(cache.teacher[it["s_off"]:it["s_off"] + it["s"]].astype(np.float32))
    targets = [torch.tensor(tok.encode(it["text"]), dtype=torch.long) for it in items]
    return {"features": feats, "lengths": torch.tensor([it["t"] for it in items]),
            "teacher": teach, "teacher_lengths": torch.tensor([it["s"] for it in items]),
            "targets": torch.cat(targets), "target_lengths": torch.tensor([len(t) for t in targets])}


# ----------------------------------------------------------------------------------------------- model
def build_student(cfg: DistillConfig, vocab_size: int) -> StreamingTransformerXL:
    teacher = load_whisper_encoder()
    student = StreamingTransformerXL(student_config(teacher.config, vocab_size=vocab_size,
                                                    chunk_frames=cfg.chunk_frames, mem_frames=cfg.mem_frames,
                                                    dropout=cfg.dropout))
    init_student(student, teacher)
    return student


NEW_PARAMETERS = ("ctc.", "fe_proj.", ".attn.pos.", ".attn.u", ".attn.v")  # what Whisper does not have


def make_optimizer(model: StreamingTransformerXL, cfg: DistillConfig) -> torch.optim.AdamW:
    """AdamW with two groups: Whisper's weights at ``lr_pretrained``, the new parameters at ``lr_new``."""
    new = [p for n, p in model.named_parameters() if any(k in n or n.startswith(k) for k in NEW_PARAMETERS)]
    new_ids = {id(p) for p in new}
    old = [p for p in model.parameters() if id(p) not in new_ids]
    return torch.optim.AdamW([{"params": old, "lr": cfg.lr_pretrained}, {"params": new, "lr": cfg.lr_new}],
                             weight_decay=cfg.weight_decay)


class _Hidden:
    """Collects the student's block outputs during a forward pass (forward hooks on its layers)."""

    def __init__(self, model: StreamingTransformerXL, layers: list[int]) -> None:
        self.outputs: dict[int, torch.Tensor] = {}
        self.handles = [model.layers[i].register_forward_hook(self._hook(i)) for i in layers]

    def _hook(self, i: int) -> Any:
        def hook(_module: Any, _inputs: Any, output: torch.Tensor) -> None:
            self.outputs[i] = output
        return hook


class Losses(NamedTuple):
    distill: torch.Tensor  # scale-free distance to the teacher's block outputs
    ctc: torch.Tensor  # CTC loss per target token
    cos: torch.Tensor  # mean cosine to the teacher over the distilled blocks (a number to track)
    logits: torch.Tensor  # (B, S', V)
    out_lengths: torch.Tensor  # (B,)


def losses(model: StreamingTransformerXL, hidden: _Hidden, batch: dict[str, torch.Tensor],
           layers: list[int]) -> Losses:
    """The losses of one batch (one forward pass of the student, the chunk + memory masked one)."""
    logits, out_lengths = model(batch["features"], batch["lengths"])  # (B, S', V)
    log_probs = F.log_softmax(logits.float(), dim=-1)
    ctc = F.ctc_loss(log_probs.transpose(0, 1), batch["targets"], out_lengths, batch["target_lengths"],
                     blank=0, reduction="sum", zero_infinity=True) / batch["target_lengths"].sum()
    teacher = batch["teacher"]  # (B, S, N, D)
    s = min(teacher.shape[1], logits.shape[1] - 1)
    # student frame j+1 <-> teacher frame j; frames past the teacher's length are padding
    valid = (torch.arange(s)[None, :] < batch["teacher_lengths"][:, None]).float()  # (B, S)
    distill = logits.new_zeros(())
    cos_sum = logits.new_zeros(())
    for n, layer in enumerate(layers):
        st = hidden.outputs[layer][:, 1:s + 1]  # (B, S, D)
        te = teacher[:, :s, n]
        cos = F.cosine_similarity(st, te, dim=-1)  # (B, S)
        mse = (st - te).square().mean(-1) / te.square().mean(-1).clamp_min(1e-6)
        distill = distill + (((1 - cos) + mse) * valid).sum() / valid.sum()
        cos_sum = cos_sum + (cos * valid).sum() / valid.sum()
    return Losses(distill / len(layers), ctc, cos_sum / len(layers), logits, out_lengths)


def greedy_text(logits: torch.Tensor, length: int, tok: CharTokenizer) -> str:
    ids = logits[:length].argmax(-1).tolist()
    out, prev = [], -1
    for i in ids:
        if i != prev and i != 0:
            out.append(i)
        prev = i
    return tok.decode(out)


def evaluate_heldout(model: StreamingTransformerXL, cache: TeacherCache, indices: list[int],
                     tok: CharTokenizer, layers: list[int]) -> dict[str, float]:
    model.eval()
    hidden = _Hidden(model, layers)
    refs, hyps, cos = [], [], []
    try:
        with torch.no_grad():
            for k in range(0, len(indices), 16):
                batch = collate(cache, indices[k:k + 16], tok)
                out = losses(model, hidden, batch, layers)
                for b, i in enumerate(indices[k:k + 16]):
                    refs.append(cache.items[i]["text"])
                    hyps.append(greedy_text(out.logits[b], int(out.out_lengths[b]), tok))
                cos.append(float(out.cos))
    finally:
        for h in hidden.handles:
            h.remove()
    model.train()
    counts = score_pairs(zip(refs, hyps, strict=True), skip_empty_refs=True)  # the one scorer
    wer, cer = counts.wer, counts.cer
    return {"wer": float("nan") if wer is None else wer, "cer": float("nan") if cer is None else cer,
            "cos": float(np.mean(cos)), "example": f"{refs[0]} | {hyps[0]}"}


# ---------------------------------------------------------------------------------------------- train
def train(cfg: DistillConfig, *, resume: bool) -> Path:
    torch.set_num_threads(cfg.threads)
    run = Path("runs") / cfg.name
    run.mkdir(parents=True, exist_ok=True)
    last = run / "last.pt"
    if last.exists() and not resume:
        raise SystemExit(f"{last} exists: pass --resume to continue it")
    folder = build_cache(Path(cfg.manifest), cfg.distill_layers, threads=1)  # one thread: no OMP spinning
    cache = TeacherCache.open(folder)
    tok = CharTokenizer()
    model = build_student(cfg, tok.vocab_size)
    if cfg.init_from:  # weights only: a run's last.pt, or an exported (e.g. committed) checkpoint
        if cfg.init_from.endswith(".safetensors"):
            model.load_state_dict(load_checkpoint(cfg.init_from).model.state_dict())
        else:
            model.load_state_dict(torch.load(cfg.init_from, map_location="cpu", weights_only=False)["model"])
    opt = make_optimizer(model, cfg)
    base_lrs = [cfg.lr_pretrained, cfg.lr_new]
    step, epoch, position = 0, 0, 0
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    if resume and last.exists():
        state = torch.load(last, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, epoch, position = state["step"], state["epoch"], state["position"]
        rng.setstate(state["rng"])
    held = sorted(heldout_indices(cache, cfg.heldout))
    train_idx = [i for i in range(len(cache.items)) if i not in set(held)]
    lengths = [it["t"] for it in cache.items]
    max_frames = int(cfg.batch_audio_s * 100)
    hidden = _Hidden(model, cfg.distill_layers)
    log = open(run / "log.jsonl", "a")
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))

    def save() -> None:
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "epoch": epoch,
                    "position": position, "rng": rng.getstate(), "config": asdict(cfg),
                    "model_config": model.config.to_dict()}, run / "last.pt.tmp")
        (run / "last.pt.tmp").rename(last)

    model.train()
    last_save = time.monotonic()
    t0, audio_s = time.monotonic(), 0.0
    while step < cfg.max_steps and not stop["now"]:
        epoch_rng = random.Random(cfg.seed * 1000 + epoch)
        batches = make_batches(lengths, train_idx, max_frames, epoch_rng)
        while position < len(batches) and step < cfg.max_steps and not stop["now"]:
            batch = collate(cache, batches[position], tok)
            position += 1
            warm = min(1.0, (step + 1) / cfg.warmup_steps)
            decay = 0.5 * (1 + math.cos(math.pi * min(1.0, step / cfg.max_steps)))
            for g, lr in zip(opt.param_groups, base_lrs, strict=True):
                g["lr"] = lr * warm * (0.05 + 0.95 * decay)
            distill, ctc, cos, _, _ = losses(model, hidden, batch, cfg.distill_layers)
            loss = cfg.distill_weight * distill + cfg.ctc_weight * ctc
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            step += 1
            audio_s += float(batch["lengths"].sum()) / 100
            if step % cfg.log_every_steps == 0:
                rec = {"kind": "train", "step": step, "epoch": epoch, "distill": float(distill.detach()),
                       "ctc": float(ctc.detach()), "cos": float(cos.detach()), "grad_norm": float(gnorm),
                       "lr": opt.param_groups[0]["lr"], "audio_per_s": audio_s / (time.monotonic() - t0)}
                log.write(json.dumps(rec) + "\n")
                log.flush()
                print(json.dumps(rec), flush=True)
            if step % cfg.eval_every_steps == 0:
                rec = {"kind": "eval", "step": step, **evaluate_heldout(model, cache, held, tok, cfg.distill_layers)}
                log.write(json.dumps(rec) + "\n")
                log.flush()
                print(json.dumps(rec), flush=True)
            if time.monotonic() - last_save > cfg.checkpoint_every_s:
                save()
                last_save = time.monotonic()
        if position >= len(batches):
            epoch, position = epoch + 1, 0
    save()
    rec = {"kind": "eval", "step": step, **evaluate_heldout(model, cache, held, tok, cfg.distill_layers)}
    log.write(json.dumps(rec) + "\n")
    print(json.dumps(rec), flush=True)
    return run


def export(run: Path, out: Path, info: dict[str, Any] | None = None) -> None:
    """Write a run's weights as the serving checkpoint (float16, with config, features and tokenizer)."""
    state = torch.load(run / "last.pt", map_location="cpu", weights_only=False)
    from streaming_model.config import ModelConfig

    model = StreamingTransformerXL(ModelConfig.from_dict(state["model_config"]))
    model.load_state_dict(state["model"])
    meta = {"run": run.name, "step": state["step"], "recipe": "distilled from Whisper tiny.en (MIT)",
            **(info or {})}
    save_checkpoint(out, model, features=whisper_features(), tokenizer=CharTokenizer(), trained=True,
                    info=meta, dtype=torch.float16)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streaming_model.distill", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cache", help="features and teacher states of a manifest")
    c.add_argument("--manifest", type=Path, required=True)
    c.add_argument("--layers", default="0,1,2")
    c.add_argument("--threads", type=int, default=2)
    t = sub.add_parser("train", help="distil into the streaming student")
    t.add_argument("--config", type=Path, required=True)
    t.add_argument("--resume", action="store_true")
    e = sub.add_parser("export", help="write a run's serving checkpoint")
    which = e.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", type=Path, help="the run's folder")
    which.add_argument("--config", type=Path, help="the run's config (its folder is runs/NAME)")
    e.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.cmd == "cache":
        print(build_cache(args.manifest, [int(x) for x in args.layers.split(",")], threads=args.threads))
    elif args.cmd == "train":
        train(DistillConfig.load(args.config), resume=args.resume)
    else:
        export(args.run or Path("runs") / DistillConfig.load(args.config).name, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
