"""Distillation training: the teacher cache, a few steps that lower both losses, resume, export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from streaming_model.checkpoint import load_checkpoint
from streaming_model.data.voices import VoiceSpec, synthesize
from streaming_model.distill import (
    DistillConfig,
    TeacherCache,
    _Hidden,
    build_cache,
    build_student,
    collate,
    export,
    losses,
    make_optimizer,
    train,
)
from streaming_model.tokenizer import CharTokenizer

TEXTS = ("can you hear me", "i want to pay my bill", "thank you for calling", "have a nice day")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("distill-data")
    lines = []
    for i, text in enumerate(TEXTS):
        voice = VoiceSpec("espeak", "en-us" if i % 2 else "en-gb", rate=165, pitch=45 + 5 * i, word_gap=0,
                          alpha=1.0, eq=())
        audio = synthesize(text, voice, seed=i)
        sf.write(folder / f"u{i}.wav", np.clip(audio, -1, 1), 8000, subtype="PCM_16")
        lines.append(json.dumps({"audio": f"u{i}.wav", "text": text, "duration_s": len(audio) / 8000,
                                 "voice": f"espeak:{voice.name}"}))
    path = folder / "manifest.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cache_holds_features_and_teacher_states(manifest: Path) -> None:
    folder = build_cache(manifest, [0, 2], threads=1)
    cache = TeacherCache.open(folder)
    assert len(cache.items) == len(TEXTS) and cache.layers == [0, 2]
    for item in cache.items:
        assert item["s"] == (item["t"] + 1) // 2  # one teacher frame per two mel frames
    assert cache.teacher.shape[1:] == (2, 384) and np.isfinite(cache.teacher).all()
    assert build_cache(manifest, [0, 2]) == folder  # reused, not recomputed


def test_a_few_steps_lower_both_losses(manifest: Path) -> None:
    torch.manual_seed(0)
    cfg = DistillConfig(distill_layers=[0, 1, 2], dropout=0.0, mem_frames=16)
    cache = TeacherCache.open(build_cache(manifest, cfg.distill_layers, threads=1))
    tok = CharTokenizer()
    model = build_student(cfg, tok.vocab_size).train()
    hidden = _Hidden(model, cfg.distill_layers)
    batch = collate(cache, list(range(len(TEXTS))), tok)
    opt = make_optimizer(model, cfg)  # the recipe's two learning rates
    first = None
    for _ in range(10):
        distill, ctc, *_ = losses(model, hidden, batch, cfg.distill_layers)
        first = first or (float(distill), float(ctc))
        opt.zero_grad()
        (distill + 0.3 * ctc).backward()
        opt.step()
    distill, ctc, *_ = losses(model, hidden, batch, cfg.distill_layers)
    assert float(distill) < 0.85 * first[0], (first, float(distill))
    assert float(ctc) < 0.5 * first[1], (first, float(ctc))


def test_train_resume_and_export(manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = DistillConfig(name="t", manifest=str(manifest), distill_layers=[0], max_steps=2, batch_audio_s=4.0,
                        heldout=1, eval_every_steps=100, log_every_steps=1, warmup_steps=1, threads=1,
                        mem_frames=16)
    run = train(cfg, resume=False)
    with pytest.raises(SystemExit, match="--resume"):
        train(cfg, resume=False)
    cfg.max_steps = 3
    train(cfg, resume=True)
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3]
    out = tmp_path / "student.safetensors"
    export(run, out)
    loaded = load_checkpoint(out)
    assert loaded.features.style == "whisper" and loaded.model.config.frontend == "whisper"
    assert loaded.trained and loaded.info["step"] == 3
