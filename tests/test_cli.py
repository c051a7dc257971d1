"""One ``xlgate`` command tree: every subcommand in one parser; bench passes its arguments on."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import pytest

from gateway import cli


def subcommands(parser: argparse.ArgumentParser) -> set[str]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(action.choices)


def subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    found: argparse.ArgumentParser = action.choices[name]
    return found


def test_one_tree_holds_every_command() -> None:
    assert subcommands(cli.build_parser()) == {"serve", "stream", "transcribe", "eval", "train", "bench",
                                               "version"}


def test_one_name_per_evaluation() -> None:
    """Scoring written transcripts, the dev-set report and the trainer's quick WER have distinct names."""
    parser = cli.build_parser()
    evaluation = subparser(parser, "eval")
    assert subcommands(evaluation) == {"score", "dev"}
    assert subcommands(subparser(evaluation, "dev")) == {"wer", "tune", "hotwords", "confidence", "calibrate"}
    assert subcommands(subparser(parser, "train")) == {"greedy-wer", "export"}


@pytest.mark.parametrize("argv", [[], ["--help"], ["--config", "a.toml", "--resume"],
                                  ["evaluate", "--checkpoint", "c.pt", "-h"]])
def test_bench_hands_over_every_argument(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> None:
    seen: list[list[str]] = []

    def fake_main(args: Sequence[str] | None = None) -> int:
        seen.append(list(args or []))
        return 7

    monkeypatch.setattr("loadtest.__main__.main", fake_main)
    assert cli.main(["bench", *argv]) == 7
    assert seen == [argv]


@pytest.mark.parametrize(("argv", "target", "expected"), [
    (["--config", "a.toml", "--resume"], "cmd_train", {"config": "a.toml", "resume": True}),
    (["greedy-wer", "--checkpoint", "c.pt", "--manifest", "m.jsonl"], "cmd_greedy_wer",
     {"checkpoint": "c.pt", "manifest": "m.jsonl", "threads": 2}),
    (["export", "--run", "runs/x", "--out", "o.safetensors", "--which", "best"], "cmd_export",
     {"run": "runs/x", "out": "o.safetensors", "which": "best"}),
])
def test_train_commands_are_in_the_tree(monkeypatch: pytest.MonkeyPatch, argv: list[str], target: str,
                                        expected: dict[str, Any]) -> None:
    """``xlgate train`` and ``python -m streaming_model.train`` parse alike and reach the same command."""
    from streaming_model import train, train_cli

    seen: list[dict[str, Any]] = []

    def fake(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
        seen.append(vars(args))
        return 5

    # The parsers hold the functions themselves (set_defaults), so replace them before the tree is built.
    monkeypatch.setattr(train_cli, target, fake)
    assert cli.main(["train", *argv]) == 5
    assert train.main(argv) == 5
    assert len(seen) == 2 and all(expected.items() <= s.items() for s in seen)


def test_train_without_config_or_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["train"])
    assert exc.value.code == 2 and "--config is required" in capsys.readouterr().err
