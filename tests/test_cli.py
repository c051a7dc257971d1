"""One ``xlgate`` command tree: every subcommand in one parser; train and bench pass their arguments on."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import pytest

from gateway import cli


def subcommands(parser: argparse.ArgumentParser) -> set[str]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(action.choices)


def test_one_tree_holds_every_command() -> None:
    assert subcommands(cli.build_parser()) == {"serve", "stream", "transcribe", "eval", "train", "bench",
                                               "version"}


@pytest.mark.parametrize(("command", "target"), [("train", "streaming_model.train"),
                                                 ("bench", "loadtest.__main__")])
@pytest.mark.parametrize("argv", [[], ["--help"], ["--config", "a.toml", "--resume"],
                                  ["evaluate", "--checkpoint", "c.pt", "-h"]])
def test_pass_through_commands_hand_over_every_argument(monkeypatch: pytest.MonkeyPatch, command: str,
                                                        target: str, argv: list[str]) -> None:
    seen: list[list[str]] = []

    def fake_main(args: Sequence[str] | None = None) -> int:
        seen.append(list(args or []))
        return 7

    monkeypatch.setattr(f"{target}.main", fake_main)
    assert cli.main([command, *argv]) == 7
    assert seen == [argv]
