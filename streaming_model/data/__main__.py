"""Command line: ``python -m streaming_model.data {generate,oov} ...`` (see docs/data.md)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from streaming_model.data.generate import clear_cache, generate
from streaming_model.data.oov import oov_report, training_vocabulary


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run a sub-command; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m streaming_model.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="synthesise 8 kHz WAVs and a JSON-lines manifest")
    gen.add_argument(
        "--out", type=Path, required=True, help="output folder (manifest.jsonl and wav/ go here)"
    )
    gen.add_argument("--split", choices=("train", "dev"), default="train")
    gen.add_argument("--hours", type=float, default=None, help="hours of audio (default 10 train, 1.1 dev)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--workers", type=int, default=2, help="processes (one per core)")
    gen.add_argument(
        "--channel-fraction",
        type=float,
        default=None,
        help="share through the telephone channel (default 0.6 train, 0.5 dev)",
    )
    gen.add_argument(
        "--export-manifests",
        type=Path,
        default=None,
        help="dev only: also write dev.jsonl and dev_hotwords.jsonl here (e.g. dev/manifests)",
    )
    gen.add_argument("--force", action="store_true", help="delete cached audio first")
    oov = sub.add_parser("oov", help="out-of-vocabulary rate of a manifest against the training texts")
    oov.add_argument("manifest", type=Path)
    oov.add_argument(
        "--train-manifest",
        type=Path,
        default=None,
        help="training manifest whose texts form the vocabulary (default: sample the generator)",
    )
    oov.add_argument("--samples", type=int, default=200_000, help="texts sampled when no --train-manifest")
    oov.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "generate":
        if args.force:
            clear_cache(args.out)
        generate(
            out_dir=args.out,
            split=args.split,
            seed=args.seed,
            workers=args.workers,
            hours=args.hours,
            export_dir=args.export_manifests,
            channel_fraction=args.channel_fraction,
        )
    else:
        vocabulary = training_vocabulary(
            train_manifest=args.train_manifest, samples=args.samples, seed=args.seed
        )
        print(oov_report(args.manifest, vocabulary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
