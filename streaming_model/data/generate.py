"""Synthetic training/dev data generation: plan, synthesise, channel, write WAV + manifest.

Determinism: utterance ``i`` of a split is planned from ``np.random.default_rng([seed, split, subset, i])``
alone (text, voice, pseudo-speaker, channel), so results do not depend on the number of workers or on
which utterances were already on disk. The manifest holds utterances ``0..k`` where ``k`` is the first
index at which the total duration reaches the requested hours.

Caching: an utterance whose WAV exists is not synthesised again; its duration is read from the header.
WAVs are written to a temporary name and renamed, so an interrupted run leaves no half files.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from streaming_model.data import channel as ch
from streaming_model.data.manifest import Utterance, write_manifest
from streaming_model.data.text import HOTWORDS, TextSampler, hotword_text
from streaming_model.data.voices import SAMPLE_RATE_HZ, VoiceSpec, sample_voice, synthesize

_SPLIT_CODE = {"train": 1, "dev": 2}
_SUBSET_CODE = {"main": 1, "hotwords": 2, "babble": 3}
DEFAULT_CHANNEL_FRACTION = {"train": 0.6, "dev": 0.5}
DEV_HOURS = 1.1
HOTWORD_UTTERANCES = 200
_CHUNK = 256
_LOG = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything needed to make one utterance; a pure function of (seed, split, subset, index)."""

    seed: int
    split: str
    subset_kind: str
    index: int
    text: str
    subset: str
    voice: VoiceSpec
    use_channel: bool

    @property
    def rel_path(self) -> str:
        prefix = "hot" if self.subset_kind == "hotwords" else self.split
        return f"wav/{prefix}/{self.index // 1000:04d}/{prefix}-{self.seed}-{self.index:07d}.wav"

    def rng(self, stream: int) -> np.random.Generator:
        """An independent generator for one processing stage of this utterance."""
        return np.random.default_rng(
            [self.seed, _SPLIT_CODE[self.split], _SUBSET_CODE[self.subset_kind], self.index, stream]
        )


@functools.cache
def _sampler(split: str) -> TextSampler:
    return TextSampler(split)


def make_plan(
    *, seed: int, split: str, index: int, subset_kind: str = "main", channel_fraction: float | None = None
) -> Plan:
    """Plan utterance ``index`` of a split (``subset_kind`` "main" or "hotwords")."""
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], _SUBSET_CODE[subset_kind], index])
    if subset_kind == "hotwords":
        text, subset = hotword_text(rng, seed), "hotwords"
    else:
        text, subset = _sampler(split).sample(rng)
    voice = sample_voice(rng, split)
    fraction = DEFAULT_CHANNEL_FRACTION[split] if channel_fraction is None else channel_fraction
    return Plan(seed, split, subset_kind, index, text, subset, voice, bool(rng.random() < fraction))


@functools.cache
def _resources(seed: int, split: str) -> ch.ChannelResources:
    """Babble bank made from other utterances of the same split (espeak-ng only: fast), and hold music."""
    bank = []
    for i in range(24):
        rng = np.random.default_rng([seed, _SPLIT_CODE[split], _SUBSET_CODE["babble"], i])
        text, _ = _sampler(split).sample(rng)
        voice = sample_voice(rng, split)
        if voice.engine != "espeak":
            voice = VoiceSpec("espeak", "en-us", 170, 50, 0, voice.alpha, ())
        bank.append(synthesize(text, voice, seed=i))
    return ch.ChannelResources(babble_bank=bank, music=ch.hold_music())


def render(plan: Plan) -> tuple[np.ndarray, str]:
    """Synthesise and (maybe) pass through the telephone channel; returns (float32 8 kHz audio, channel tag)."""
    audio = synthesize(plan.text, plan.voice, seed=plan.index)
    rng = plan.rng(1)
    pad = (
        np.zeros(int(rng.integers(400, 2400)), np.float32),
        np.zeros(int(rng.integers(400, 2400)), np.float32),
    )
    audio = np.concatenate([pad[0], audio, pad[1]])
    peak = float(np.max(np.abs(audio))) or 1.0
    audio = (audio * (10 ** (rng.uniform(-12, -1) / 20) / peak)).astype(np.float32)
    if not plan.use_channel:
        return audio, "clean"
    tags = []
    if rng.random() < 0.2:
        factor = float(rng.choice([0.9, 1.1]))
        audio = ch.speed_perturb(audio, factor)
        tags.append(f"speed{factor:g}")
    audio, tag = ch.apply_channel(audio, plan.rng(2), _resources(plan.seed, plan.split))
    return audio, "+".join([*tags, tag])


def _work(args: tuple[Plan, str]) -> Utterance:
    plan, out_dir = args
    path = Path(out_dir) / plan.rel_path
    if path.exists():
        duration = sf.info(str(path)).frames / SAMPLE_RATE_HZ
        # the channel tag depends on the rendered audio's path through the chain; it is kept in a sidecar
        tag = path.with_suffix(".tag").read_text() if path.with_suffix(".tag").exists() else None
    else:
        audio, tag = render(plan)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + f".{os.getpid()}.tmp.wav")
        sf.write(str(tmp), audio, SAMPLE_RATE_HZ, subtype="PCM_16")
        path.with_suffix(".tag").write_text(tag)
        os.replace(tmp, path)
        duration = len(audio) / SAMPLE_RATE_HZ
    return Utterance(
        audio=plan.rel_path,
        text=plan.text,
        duration_s=duration,
        voice=plan.voice.label,
        subset=plan.subset,
        channel=tag,
    )


def _plans(
    seed: int, split: str, subset_kind: str, start: int, stop: int, channel_fraction: float | None
) -> list[Plan]:
    return [
        make_plan(seed=seed, split=split, index=i, subset_kind=subset_kind, channel_fraction=channel_fraction)
        for i in range(start, stop)
    ]


def _init_worker() -> None:
    # one thread per process: parallelism comes from the processes
    os.environ["OMP_NUM_THREADS"] = "1"


def run_generation(
    *,
    out_dir: Path,
    split: str,
    seed: int,
    workers: int,
    hours: float | None = None,
    count: int | None = None,
    subset_kind: str = "main",
    channel_fraction: float | None = None,
) -> list[Utterance]:
    """Generate until ``hours`` of audio (or ``count`` utterances); returns the manifest entries in order."""
    if (hours is None) == (count is None):
        raise ValueError("give exactly one of hours and count")
    target_s = None if hours is None else hours * 3600.0
    out: list[Utterance] = []
    total_s = 0.0
    ctx = multiprocessing.get_context("fork")
    desc = f"{split}/{subset_kind}"
    with (
        ctx.Pool(workers, initializer=_init_worker) as pool,
        tqdm(total=round(target_s) if target_s else count, unit="s" if target_s else "utt", desc=desc) as bar,
    ):
        start = 0
        while True:
            stop = start + _CHUNK if count is None else min(start + _CHUNK, count)
            jobs = [
                (p, str(out_dir)) for p in _plans(seed, split, subset_kind, start, stop, channel_fraction)
            ]
            for utt in pool.imap(_work, jobs, chunksize=4):
                out.append(utt)
                total_s += utt.duration_s
                bar.update(round(utt.duration_s) if target_s else 1)
                if target_s is not None and total_s >= target_s:
                    pool.terminate()
                    return out
            if count is not None and len(out) >= count:
                return out
            start = stop


def _export(manifest: list[Utterance], out_dir: Path, export_path: Path) -> None:
    """Write a copy of a manifest whose audio paths are relative to ``export_path``'s folder."""
    rel = os.path.relpath(out_dir.resolve(), export_path.parent.resolve())
    write_manifest(
        export_path,
        [
            Utterance(
                audio=f"{rel}/{u.audio}",
                text=u.text,
                duration_s=u.duration_s,
                voice=u.voice,
                subset=u.subset,
                channel=u.channel,
            )
            for u in manifest
        ],
    )


def generate(
    *,
    out_dir: Path,
    split: str,
    seed: int,
    workers: int,
    hours: float | None,
    export_dir: Path | None = None,
    channel_fraction: float | None = None,
) -> None:
    """The ``generate`` command: a split's audio and manifest(s) under ``out_dir``.

    For ``dev`` this also makes the hotword subset (``manifest_hotwords.jsonl``); with ``export_dir``
    the dev manifests are copied there as ``dev.jsonl`` / ``dev_hotwords.jsonl`` (paths rewritten) and
    the hotword list is written beside it as ``../hotwords.txt``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if hours is None:
        hours = DEV_HOURS if split == "dev" else 10.0
    manifest = run_generation(
        out_dir=out_dir,
        split=split,
        seed=seed,
        workers=workers,
        hours=hours,
        channel_fraction=channel_fraction,
    )
    write_manifest(out_dir / "manifest.jsonl", manifest)
    _LOG.info(
        "%s: %d utterances, %.2f h -> %s",
        split,
        len(manifest),
        sum(u.duration_s for u in manifest) / 3600,
        out_dir / "manifest.jsonl",
    )
    if split != "dev":
        return
    hot = run_generation(
        out_dir=out_dir,
        split=split,
        seed=seed,
        workers=workers,
        count=HOTWORD_UTTERANCES,
        subset_kind="hotwords",
        channel_fraction=channel_fraction,
    )
    write_manifest(out_dir / "manifest_hotwords.jsonl", hot)
    if export_dir is not None:
        _export(manifest, out_dir, export_dir / "dev.jsonl")
        _export(hot, out_dir, export_dir / "dev_hotwords.jsonl")
        hotwords_txt = export_dir.parent / "hotwords.txt"
        hotwords_txt.write_text("\n".join(HOTWORDS) + "\n", encoding="utf-8")
        _LOG.info("exported dev manifests to %s and %s", export_dir, hotwords_txt)


def clear_cache(out_dir: Path) -> None:
    """Remove generated audio (used by ``generate --force``)."""
    shutil.rmtree(out_dir / "wav", ignore_errors=True)
