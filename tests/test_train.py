"""Training loop, resume, tokenizer, SpecAugment, export, DDP: on a tiny model and synthetic tone "speech"."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from streaming_model.checkpoint import load_checkpoint
from streaming_model.data.manifest import Utterance, write_manifest
from streaming_model.tokenizer import SentencePieceTokenizer, normalise_text
from streaming_model.train import (
    TrainConfig,
    evaluate_manifest,
    export_run,
    lr_at,
    main,
    make_batches,
    spec_augment,
    train,
    train_sentencepiece,
)

TINY_MODEL = {"n_layers": 1, "d_model": 32, "n_heads": 2, "d_ff": 64, "frontend_channels": 32, "conv_kernel": 3,
              "chunk_frames": 2, "mem_frames": 4, "right_frames": 1}  # trains the look-ahead pass too
WORDS = ["yes", "no", "card", "bank", "hello", "thanks"]


def _tone_utterance(text: str, rng: np.random.Generator) -> np.ndarray:
    """One 150 ms tone per letter (pitch by letter) with short gaps: learnable, and fast to make."""
    pieces = []
    for ch in text:
        if ch == " ":
            pieces.append(np.zeros(800, dtype=np.float32))
            continue
        freq = 300 + 100 * (ord(ch) - ord("a"))
        t = np.arange(1200) / 8000
        pieces.append(0.3 * np.sin(2 * np.pi * freq * t).astype(np.float32))
        pieces.append(np.zeros(200, dtype=np.float32))
    audio = np.concatenate(pieces)
    return (audio + 0.003 * rng.standard_normal(audio.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train-data")
    rng = np.random.default_rng(0)
    utterances = []
    for i in range(14):
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 3))))
        audio = _tone_utterance(text, rng)
        rel = f"wav/{i:03d}.wav"
        (root / "wav").mkdir(exist_ok=True)
        sf.write(root / rel, audio, 8000, subtype="PCM_16")
        utterances.append(Utterance(audio=rel, text=text, duration_s=len(audio) / 8000))
    write_manifest(root / "manifest.jsonl", utterances)
    return root / "manifest.jsonl"


def _config(manifest: Path, runs: Path, **overrides: object) -> TrainConfig:
    base: dict[str, object] = dict(
        name="tiny", runs_dir=str(runs), train_manifest=str(manifest), cache_dir=str(runs / "cache"),
        cache_workers=1, tokenizer="char", max_frames_per_batch=600, holdout_utts=2, lr=3e-3, warmup_steps=0,
        total_steps=12, specaug_start_step=0, log_every_steps=1, eval_every_steps=1000, checkpoint_every_s=1e9,
        threads=1, precision="fp32", model=dict(TINY_MODEL))
    base.update(overrides)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _log(cfg: TrainConfig) -> list[dict[str, object]]:
    return [json.loads(line) for line in (cfg.run_dir / "log.jsonl").read_text().splitlines()]


def test_a_few_steps_lower_the_loss(dataset: Path, tmp_path: Path) -> None:
    cfg = _config(dataset, tmp_path, total_steps=16, precision="bf16")
    progress = train(cfg, progress_bar=False)
    assert progress.step == 16
    losses = [r["loss"] for r in _log(cfg) if r["kind"] == "train"]
    assert len(losses) == 16
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])
    evals = [r for r in _log(cfg) if r["kind"] == "eval"]
    assert evals and 0.0 <= evals[-1]["wer"]  # final evaluation on the held-out slice
    assert (cfg.run_dir / "curve.png").stat().st_size > 0
    assert (cfg.run_dir / "last.pt").is_file() and (cfg.run_dir / "best.pt").is_file()


def test_resume_continues_at_the_right_step_with_identical_state(dataset: Path, tmp_path: Path) -> None:
    straight = _config(dataset, tmp_path, name="straight", total_steps=6)
    train(straight, progress_bar=False)
    cut = _config(dataset, tmp_path, name="cut", total_steps=6)
    progress = train(cut, progress_bar=False, stop_at_step=3)  # as if SIGTERM arrived after step 3
    assert progress.step == 3
    saved = torch.load(cut.run_dir / "last.pt", weights_only=False)
    assert saved["progress"]["step"] == 3 and saved["scheduler"]["last_epoch"] == 3
    with pytest.raises(FileExistsError):
        train(cut, progress_bar=False)  # never silently restart over a checkpoint
    progress = train(cut, resume=True, progress_bar=False)
    assert progress.step == 6
    a = torch.load(straight.run_dir / "last.pt", weights_only=False)
    b = torch.load(cut.run_dir / "last.pt", weights_only=False)
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    opt_a, opt_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert opt_a.keys() == opt_b.keys()
    for key in opt_a:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(opt_b[key][name], opt_a[key][name], rtol=1e-5, atol=1e-7)
    assert [r["step"] for r in _log(cut) if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]


def test_sentencepiece_trains_and_round_trips() -> None:
    rng = np.random.default_rng(1)
    vocab = ["account", "balance", "card", "thank", "you", "for", "calling", "what's", "the", "number",
             "zebra", "quick", "jump", "over", "lazy", "dog", "fox", "brown", "twenty", "seven"]
    texts = [" ".join(rng.choice(vocab, size=int(rng.integers(3, 9)))) for _ in range(300)]
    tok = train_sentencepiece(texts, vocab_size=60)
    assert isinstance(tok, SentencePieceTokenizer)
    assert tok.vocab_size == 61  # blank + 60 pieces
    sp = tok._sp
    assert sp.unk_id() == 0 and sp.bos_id() == -1 and sp.eos_id() == -1 and sp.pad_id() == -1
    for text in [*texts[:20], "Quick, brown FOX!", "what's the number"]:
        ids = tok.encode(text)
        assert ids and 0 not in ids and 1 not in ids  # never the blank, never <unk> (sp id 0)
        assert tok.decode(ids) == normalise_text(text)
    # every letter is a piece even if the training texts lack it (required_chars)
    assert 1 not in tok.encode("vwxz")
    restored = SentencePieceTokenizer(__import__("base64").b64decode(tok.to_dict()["model"]))
    assert restored.encode("thank you") == tok.encode("thank you")


def test_spec_augment_keeps_shapes_and_padding() -> None:
    torch.manual_seed(0)
    feats = torch.randn(3, 500, 64)
    lengths = torch.tensor([500, 320, 90])
    fill = torch.full((64,), 7.0)
    out = spec_augment(feats, lengths, fill=fill, freq_masks=2, freq_mask_max_bins=10, time_masks_per_s=1.0,
                       time_mask_max_s=0.3, max_time_masks=8)
    assert out.shape == feats.shape and out.dtype == feats.dtype
    assert not torch.equal(out, feats)
    masked = out != feats
    assert torch.all(out[masked] == 7.0)
    assert torch.equal(out[1, 320:], feats[1, 320:])  # padding untouched
    assert torch.equal(feats, feats.clone())  # input not modified in place


def test_batches_respect_the_frame_budget() -> None:
    lengths = np.array([100, 900, 250, 250, 40, 600, 300])
    batches = make_batches(lengths, np.arange(7), max_frames=1000, max_utts=3, rng=np.random.default_rng(0))
    assert sorted(i for b in batches for i in b) == list(range(7))
    for b in batches:
        assert (len(b) <= 3 and max(lengths[b]) * len(b) <= 1000) or len(b) == 1


def test_schedule_warms_up_then_decays() -> None:
    cfg = TrainConfig(lr=1e-3, warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(10, cfg) == pytest.approx(1e-3)
    assert lr_at(60, cfg) == pytest.approx(0.55e-3)
    assert lr_at(110, cfg) == pytest.approx(1e-4)


def test_config_file_and_unknown_keys(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    cfg = TrainConfig.from_toml(repo / "configs" / "train-cpu.toml")
    assert cfg.tokenizer == "sentencepiece" and cfg.name == "cpu1" and not cfg.model  # default geometry
    assert TrainConfig.from_toml(repo / "configs" / "train-gpu.toml").device == "cuda"
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim]\nlearning_rate = 1.0\n")
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig.from_toml(bad)


def test_export_and_evaluate(dataset: Path, tmp_path: Path) -> None:
    cfg = _config(dataset, tmp_path, name="exp", total_steps=3)
    train(cfg, progress_bar=False)
    out = export_run(cfg.run_dir, tmp_path / "model.safetensors")
    loaded = load_checkpoint(out)
    assert loaded.trained is True
    assert loaded.info["steps"] == 3 and "hardware" in loaded.info
    assert out.stat().st_size < 16 * 2**20
    result = evaluate_manifest(out, dataset, threads=1, progress_bar=False)
    assert result["utterances"] == 14 and 0.0 <= result["wer"]
    # the command line: greedy-wer of a run checkpoint (writes dev_eval.json), export picks its WER up
    assert main(["greedy-wer", "--checkpoint", str(cfg.run_dir / "last.pt"), "--manifest", str(dataset),
                 "--threads", "1"]) == 0
    wer = json.loads((cfg.run_dir / "dev_eval.json").read_text())["wer"]
    assert main(["export", "--run", str(cfg.run_dir), "--out", str(tmp_path / "cli.safetensors")]) == 0
    assert load_checkpoint(tmp_path / "cli.safetensors").info["dev_wer"] == wer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ddp_worker(rank: int, world_size: int, port: int, cfg_dict: dict[str, object]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    cfg = TrainConfig(**cfg_dict)  # type: ignore[arg-type]
    train(cfg, progress_bar=False)


@pytest.mark.slow
def test_ddp_two_ranks_on_gloo(dataset: Path, tmp_path: Path) -> None:
    cfg = _config(dataset, tmp_path, name="ddp", total_steps=3, max_frames_per_batch=300)
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), cfg.to_dict()), nprocs=2, join=True)
    saved = torch.load(cfg.run_dir / "last.pt", weights_only=False)
    assert saved["progress"]["step"] == 3
    assert [r["step"] for r in _log(cfg) if r["kind"] == "train"] == [1, 2, 3]  # rank 0 alone wrote the log


def test_warm_start_from_an_exported_checkpoint(dataset: Path, tmp_path: Path) -> None:
    first = _config(dataset, tmp_path, name="first", total_steps=3)
    train(first, progress_bar=False)
    exported = export_run(first.run_dir, tmp_path / "warm.safetensors")
    # One step at a negligible learning rate: the run starts from the exported weights, not a fresh init.
    second = _config(dataset, tmp_path, name="second", total_steps=1, lr=1e-12, init_from=str(exported))
    train(second, progress_bar=False)
    warm = load_checkpoint(exported).model.state_dict()
    started = torch.load(second.run_dir / "last.pt", weights_only=False)["model"]
    for key, value in warm.items():
        torch.testing.assert_close(started[key].float(), value.float(), rtol=0, atol=1e-6, msg=key)
    assert json.loads((second.run_dir / "tokenizer.json").read_text()) == {"type": "char"}
    with pytest.raises(ValueError, match="geometry"):
        other = dict(TINY_MODEL, n_layers=TINY_MODEL["n_layers"] + 1)
        train(_config(dataset, tmp_path, name="third", total_steps=1, init_from=str(exported), model=other),
              progress_bar=False)
