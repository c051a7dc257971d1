"""The ``xlgate`` command: serve, stream, transcribe, eval, version."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from gateway.config import ConfigError, EventLoop, add_serve_arguments, resolve_serve_settings
from gateway.logging import configure_logging


def run_async(coro: Coroutine[Any, Any, Any], event_loop: EventLoop = EventLoop.UVLOOP) -> Any:
    """Run on uvloop when asked and available, else on asyncio's own loop."""
    if event_loop is EventLoop.UVLOOP:
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
            print("uvloop is not installed; using asyncio's loop", file=sys.stderr)
        else:
            return uvloop.run(coro)
    return asyncio.run(coro)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("xlgate")
    except PackageNotFoundError:  # running from a source tree
        return "0.1.0+src"


def cmd_serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        settings = resolve_serve_settings(args, os.environ)
    except ConfigError as exc:
        parser.error(str(exc))
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    from gateway.server import run_server

    run_async(run_server(settings), settings.event_loop)
    return 0


def cmd_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from streaming_model.train import main as train_main

    return int(train_main(args.args))


def cmd_version(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import torch

    print(f"xlgate {_version()} (torch {torch.__version__}, python {sys.version.split()[0]})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xlgate", description="Real-time speech gateway for contact centers.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway",
                           description="Run the gateway. Every option can also be set by an XLGATE_* "
                                       "environment variable or a TOML file (--config); flags win, then "
                                       "the environment, then the file, then the defaults.")
    add_serve_arguments(serve)
    serve.set_defaults(func=cmd_serve)

    from gateway import client, offline

    client.add_arguments(sub.add_parser("stream", help="stream a WAV file or the microphone to a gateway",
                                        description="Stream audio in real time to a running gateway and "
                                                    "print partial and final transcripts as they come."))
    offline.add_transcribe_arguments(sub.add_parser(
        "transcribe", help="transcribe files offline through the streaming path",
        description="Transcribe audio files in-process through the same streaming engine the server uses. "
                    "stdout carries only results; progress and errors go to stderr."))
    offline.add_eval_arguments(sub.add_parser(
        "eval", help="WER/CER of hypotheses against references",
        description="Score a hypotheses TSV against a references TSV (id<TAB>text), overall and per subset "
                    "(the part of an id before its first '/')."))

    train = sub.add_parser("train", help="train the model (see docs/training.md)", add_help=False,
                           description="Train, evaluate or export the acoustic model; arguments are those of "
                                       "`python -m streaming_model.train` (try `xlgate train --help`).")
    train.add_argument("args", nargs=argparse.REMAINDER)
    train.set_defaults(func=cmd_train)

    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=cmd_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["train"]:  # the trainer has its own parser (and subcommands)
        from streaming_model.train import main as train_main

        return int(train_main(args_list[1:]))
    parser = build_parser()
    args = parser.parse_args(args_list)
    return int(args.func(args, parser))


if __name__ == "__main__":
    sys.exit(main())
