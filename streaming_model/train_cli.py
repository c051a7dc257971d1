"""The ``xlgate train`` command (``python -m streaming_model.train`` is the same parser): train, greedy-wer, export.

::

    xlgate train --config configs/train-cpu-char.toml [--resume] [--no-progress]
    xlgate train greedy-wer --checkpoint runs/cpu1/last.pt --manifest dev/manifests/dev.jsonl
    xlgate train export --run runs/cpu1 --out streaming_model/assets/xlgate-en-8k.safetensors

Training is the command itself (so ``torchrun -m streaming_model.train --config ...`` and ``make train`` keep
their spelling); ``greedy-wer`` and ``export`` are its subcommands. ``greedy-wer`` is the trainer's quick
report: greedy decoding of ``model.forward`` on whole utterances of a manifest, written beside a run checkpoint
as ``dev_eval.json``, where ``export`` picks it up. The figures a user would get from the server come from
``xlgate eval dev`` (the streaming engine); hypotheses already written are scored by ``xlgate eval score``.

The parser is declared here, apart from :mod:`streaming_model.train`, so that building the ``xlgate`` tree
does not import torch; each command imports the trainer when it runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["add_arguments", "cmd_export", "cmd_greedy_wer", "cmd_train"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The training flags and the ``greedy-wer`` and ``export`` subcommands; sets ``func`` on each."""
    parser.add_argument("--config", default=None, help="TOML file, e.g. configs/train-cpu-char.toml (required "
                                                        "to train)")
    parser.add_argument("--resume", action="store_true", help="continue runs/NAME/last.pt")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    parser.set_defaults(func=cmd_train)
    sub = parser.add_subparsers(dest="train_command", metavar="{greedy-wer,export}")

    wer = sub.add_parser("greedy-wer", help="greedy WER/CER of a checkpoint on a manifest (reporting only)",
                         description="Greedy WER/CER of a run checkpoint or an exported model on a manifest: "
                                     "model.forward on whole utterances, no engine (xlgate eval dev wer gives "
                                     "the served figures). Reporting only.")
    wer.add_argument("--checkpoint", required=True, help="runs/NAME/last.pt, best.pt or a .safetensors file")
    wer.add_argument("--manifest", required=True)
    wer.add_argument("--threads", type=_positive_int, default=2)
    wer.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    wer.add_argument("--out", help="write the result as JSON here (default: dev_eval.json beside a run "
                                   "checkpoint, where export reads it)")
    wer.set_defaults(func=cmd_greedy_wer)

    export = sub.add_parser("export", help="write the float16 inference checkpoint of a run",
                            description="Write the float16 inference checkpoint (.safetensors) of a run.")
    export.add_argument("--run", required=True, help="runs/NAME")
    export.add_argument("--out", required=True)
    export.add_argument("--which", choices=("last", "best"), default="last")
    export.add_argument("--dev-wer", type=float, default=None, help="dev WER to record in the file's info")
    export.set_defaults(func=cmd_export)


def cmd_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Train (or resume) the run a config describes."""
    if args.config is None:
        parser.error("train: --config is required to train (or give a subcommand: greedy-wer, export)")
    from streaming_model.train import TrainConfig, train

    train(TrainConfig.from_toml(args.config), resume=args.resume, progress_bar=not args.no_progress)
    return 0


def cmd_greedy_wer(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Print (and write) the greedy WER/CER of a checkpoint on a manifest."""
    from streaming_model.train import evaluate_manifest

    result = evaluate_manifest(args.checkpoint, args.manifest, threads=args.threads, precision=args.precision)
    print(json.dumps(result, indent=2))
    is_run_state = args.checkpoint.endswith(".pt")
    out = args.out or (str(Path(args.checkpoint).parent / "dev_eval.json") if is_run_state else None)
    if out:
        Path(out).write_text(json.dumps(result, indent=2))
    return 0


def cmd_export(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Export a run's checkpoint for inference and print what was written."""
    from streaming_model.checkpoint import load_checkpoint
    from streaming_model.train import export_run

    path = export_run(args.run, args.out, which=args.which, dev_wer=args.dev_wer)
    loaded = load_checkpoint(path)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.2f} MiB, trained={loaded.trained}): {loaded.info}")
    return 0
