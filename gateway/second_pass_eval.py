"""Measure the Whisper second pass (streaming_model.second_pass) on a dev manifest: WER and latency per
variant, and hotword recall with and without a prompt. Reporting only; the dev set is never trained on.

    python -m gateway.second_pass_eval --manifest dev/manifests/dev.jsonl --limit 150 \
        --variants int8:pad3-ts-guard,int8:nopad [--hotwords dev/hotwords.txt] --out x.json

It lives in gateway/ because scoring dev items goes through the evaluation module (gateway.evaluate).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch

from streaming_model.features import whisper_features
from streaming_model.second_pass import SecondPassOptions, WhisperSecondPass, normalise_final

# ------------------------------------------------------------------------------------------- measurement


def _hotword_list(phrases: Sequence[str], reference: str, *, size: int, seed: int) -> list[str]:
    """A deployment's hotword list as the measurement simulates it: the phrases spoken in ``reference`` and
    random others up to ``size`` phrases, shuffled (Whisper's prompt holds about 40 phrases, not 100)."""
    rng = np.random.default_rng(seed)
    spoken = [p for p in phrases if f" {normalise_final(p)} " in f" {normalise_final(reference)} "]
    others = [p for p in phrases if p not in spoken]
    picked = spoken + [others[k] for k in rng.permutation(len(others))[:max(size - len(spoken), 0)]]
    return [picked[k] for k in rng.permutation(len(picked))]


def _measure(manifest: Path, *, limit: int, variants: Sequence[str], hotwords_file: Path | None,
             hotword_list_size: int, compute_types: Sequence[str]) -> dict[str, Any]:
    """WER and latency of each variant on the first ``limit`` utterances of a manifest (dev only)."""
    import soundfile as sf

    from gateway.evaluate import hotword_counts, load_items, score_items
    from streaming_model.features import compute_fbank
    from streaming_model.pretrained.whisper import load_whisper_encoder

    items = load_items(manifest, limit=limit)
    cfg = whisper_features()
    mels = [compute_fbank(sf.read(i.path, dtype="float32")[0], cfg) for i in items]
    phrases = ([p.split("\t")[0].strip() for p in hotwords_file.read_text().splitlines() if p.strip()]
               if hotwords_file is not None else [])
    lists = [_hotword_list(phrases, i.reference, size=hotword_list_size, seed=n) for n, i in enumerate(items)]
    torch.set_num_threads(1)
    report: dict[str, Any] = {"manifest": str(manifest), "utterances": len(items), "variants": {}}
    passes: dict[str, WhisperSecondPass] = {}
    for name in variants:
        compute_type, _, setting = name.partition(":")
        if compute_type not in compute_types:
            raise ValueError(f"variant {name!r}: compute type must be one of {compute_types}")
        options = _VARIANTS[setting.removesuffix("+torch")]
        if compute_type + setting not in passes:
            encoder = load_whisper_encoder() if setting.endswith("+torch") else None
            passes[compute_type + setting] = WhisperSecondPass(compute_type=compute_type, encoder=encoder)
        second = passes[compute_type + setting]
        second.options = options
        rows: dict[str, Any] = {}
        for label, listed in ((("without", [[]] * len(items)), ("with", lists)) if phrases
                              else (("plain", [[]] * len(items)),)):
            results = [second.transcribe(mel, hotwords=hot) for mel, hot in zip(mels, listed, strict=True)]
            hyps = [r.text for r in results]
            total_ms = np.array([(r.encode_s + r.decode_s) * 1000 for r in results])
            scores = score_items(items, hyps)
            row: dict[str, Any] = {
                "wer": scores["overall"]["wer"],
                "channels": {k: v["wer"] for k, v in scores["channels"].items()},
                "encode_ms_p50": float(np.median([r.encode_s * 1000 for r in results])),
                "decode_ms_p50": float(np.median([r.decode_s * 1000 for r in results])),
                "decode_ms_p95": float(np.percentile([r.decode_s * 1000 for r in results], 95)),
                "latency_ms_p50": float(np.percentile(total_ms, 50)),
                "latency_ms_p95": float(np.percentile(total_ms, 95)),
                "latency_ms_max": float(total_ms.max()),
                "guarded": sum(r.guarded for r in results),
                "reached_max_length": sum(r.reached_max_length for r in results),
                "hyps": [r.whisper_text for r in results]}
            if phrases:
                counts = hotword_counts(phrases, [i.reference for i in items], hyps)
                row.update(spoken=counts.spoken, recalled=counts.recalled, recall=counts.recall,
                           false_insertions=counts.false_insertions)
            rows[label] = row
            print(name, label, {k: v for k, v in row.items() if k != "hyps"}, flush=True)
        report["variants"][name] = {"options": asdict(options), **rows}
    return report


# Named settings for the measurement (prefix a compute type: ``int8:pad3-ts``; suffix ``+torch`` to encode
# with the PyTorch encoder in float32).
_VARIANTS: Final = {
    "nopad-nots": SecondPassOptions(pad_s=0.0, timestamps=False, repetition_guard=False),
    "nopad-nots-guard": SecondPassOptions(pad_s=0.0, timestamps=False),
    "nopad-ts-guard": SecondPassOptions(pad_s=0.0),
    "pad30-nots": SecondPassOptions(pad_s=None, timestamps=False, repetition_guard=False),
    "pad1-ts-guard": SecondPassOptions(pad_s=1.0),
    "pad3-ts": SecondPassOptions(pad_s=3.0, repetition_guard=False),
    "pad3-ts-first": SecondPassOptions(pad_s=3.0, first_segment_only=True, repetition_guard=False),
    "pad3-ts-guard": SecondPassOptions(pad_s=3.0),
    "pad3-nots-guard": SecondPassOptions(pad_s=3.0, timestamps=False),
    "pad3-ts-guard-ngram": SecondPassOptions(pad_s=3.0, no_repeat_ngram_size=4),
    "pad3-ts-guard-beam4": SecondPassOptions(pad_s=3.0, beam_size=4),
    "pad6-ts-guard": SecondPassOptions(pad_s=6.0),
}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m streaming_model.second_pass --manifest data/dev/manifest.jsonl --out sp.json``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=150)
    parser.add_argument("--variants", default="int8:pad3-ts-guard",
                        help=f"comma-separated COMPUTE:SETTING[+torch]; settings: {', '.join(_VARIANTS)}")
    parser.add_argument("--hotwords", type=Path, help="phrases, one a line: decode without and with them")
    parser.add_argument("--hotword-list-size", type=int, default=20,
                        help="phrases per utterance's list: the spoken ones plus random others")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    report = _measure(args.manifest, limit=args.limit, variants=args.variants.split(","),
                      hotwords_file=args.hotwords, hotword_list_size=args.hotword_list_size,
                      compute_types=("int8", "float32", "int8_float32"))
    args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
