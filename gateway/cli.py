"""The ``xlgate`` command: one parser tree for serve, stream, transcribe, eval, train, bench and version.

::

    xlgate serve | stream | transcribe | version
    xlgate eval score --refs REFS.tsv HYPS.tsv      score hypotheses already written (gateway.offline)
    xlgate eval dev {wer,tune,hotwords,confidence,calibrate} ...
                                                    the dev-set report through the engine (gateway.evaluate)
    xlgate train --config C [--resume]              train (streaming_model.train_cli)
    xlgate train greedy-wer | export ...            report on and export a run
    xlgate bench ...                                the load generator

Every command's flags are declared here or beside its implementation, the serve options once, in
:mod:`gateway.config`. ``bench`` hands its arguments, untouched, to the load generator's parser
(``python -m loadtest``), which must run where the gateway is not installed as a whole. Three aliases
remain: ``python -m streaming_model.train`` (``xlgate train``), ``python -m gateway.evaluate``
(``xlgate eval dev``) and ``python -m loadtest`` (``xlgate bench``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from gateway.config import ConfigError, add_serve_arguments, resolve_serve_settings
from gateway.logging import configure_logging
from gateway.loop import run_async


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("xlgate")
    except PackageNotFoundError:  # running from a source tree
        return "0.1.0+src"


def cmd_serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        settings = resolve_serve_settings(args, os.environ)
        from gateway.auth import build_authenticator, build_sip_digest

        build_authenticator(settings)  # token files and the JWT key are read and checked before start-up
        build_sip_digest(settings)
    except ConfigError as exc:
        parser.error(str(exc))
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    from gateway.server import run_server

    run_async(run_server(settings), settings.event_loop)
    return 0


def cmd_bench(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from loadtest.__main__ import main as loadtest_main

    return int(loadtest_main(args.args))


def _add_pass_through(sub: Any, name: str, *, help: str, description: str,
                      func: Callable[[argparse.Namespace, argparse.ArgumentParser], int]) -> None:
    """A command whose arguments (``--help`` included) all go to another parser: no character is an
    option prefix here, so argparse hands every argument over as it was typed."""
    parser = sub.add_parser(name, help=help, description=description, add_help=False, prefix_chars="\0")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    parser.set_defaults(func=func)


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

    from gateway import client, evaluate, offline
    from streaming_model import train_cli

    client.add_arguments(sub.add_parser("stream", help="stream a WAV file or the microphone to a gateway",
                                        description="Stream audio in real time to a running gateway and "
                                                    "print partial and final transcripts as they come."))
    offline.add_transcribe_arguments(sub.add_parser(
        "transcribe", help="transcribe files offline through the streaming path",
        description="Transcribe audio files in-process through the same streaming engine the server uses. "
                    "stdout carries only results; progress and errors go to stderr."))
    eval_sub = sub.add_parser(
        "eval", help="WER/CER: score transcripts, or report a model on the dev set",
        description="score: WER/CER of hypotheses already written; dev: a model's dev-set report, "
                    "run through the streaming engine.").add_subparsers(dest="eval_command", required=True)
    offline.add_score_arguments(eval_sub.add_parser(
        "score", help="WER/CER of a hypotheses TSV against a references TSV",
        description="Score a hypotheses TSV against a references TSV (id<TAB>text), overall and per subset "
                    "(the part of an id before its first '/')."))
    evaluate.add_dev_arguments(eval_sub.add_parser(
        "dev", help="a model's dev-set report through the streaming engine (make eval)",
        description="Transcribe a manifest through the streaming engine the server runs and report WER/CER "
                    "per subset, channel and voice, LM tuning, hotword biasing or word confidence "
                    "(see docs/training.md)."))

    train_cli.add_arguments(sub.add_parser(
        "train", help="train the model, report on and export a run (see docs/training.md)",
        description="Train the streaming model (--config), or report on (greedy-wer) and export a run. "
                    "`python -m streaming_model.train` is the same command."))
    _add_pass_through(sub, "bench", help="concurrent real-time load against a gateway (make bench)",
                      func=cmd_bench,
                      description="The load generator and latency report; arguments are those of "
                                  "`python -m loadtest` (try `xlgate bench --help`).")

    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=cmd_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    return int(args.func(args, parser))


if __name__ == "__main__":
    sys.exit(main())
