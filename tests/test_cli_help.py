"""Every command's --help describes every argument and option it takes.

Walks the real root command (`fedfleet`, with every package's sub-app mounted: the root
imports a sub-app when asked for it, so the walk asks each group for each command) and
renders each leaf command's help as a user sees it. A dependency upgrade that silently
drops help text (click 8.5 dropped typer 0.20's argument help) fails here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import click
import pytest
import typer
from click.testing import CliRunner

from fedfleet.cli import build_app


def _subcommand(group: click.Group, name: str) -> click.Command:
    command = group.get_command(click.Context(group), name)
    assert command is not None, f"{name} is listed but cannot be loaded"
    return command


def _leaves(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(command, click.Group):
        for name in command.list_commands(click.Context(command)):
            yield from _leaves(_subcommand(command, name), (*path, name))
    else:
        yield path


ROOT = typer.main.get_command(build_app())
LEAVES = sorted(_leaves(ROOT))


def _command(path: tuple[str, ...]) -> click.Command:
    command = ROOT
    for name in path:
        assert isinstance(command, click.Group)
        command = _subcommand(command, name)
    return command


def _words(text: str) -> str:
    return " ".join(re.sub(r"[│╭╮╰╯─*]", " ", text).split())


def test_the_walk_finds_the_commands_users_type() -> None:
    for path in [("simulate",), ("run", "submit"), ("image", "build"), ("device", "run")]:
        assert path in LEAVES, LEAVES
    assert len(LEAVES) >= 25


@pytest.mark.parametrize("path", LEAVES, ids=[" ".join(p) for p in LEAVES])
def test_help_shows_every_parameters_description(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(ROOT, [*path, "--help"], env={"COLUMNS": "2000"})
    assert result.exit_code == 0, result.output
    shown = _words(result.output)
    for param in _command(path).params:
        if param.name == "help" or getattr(param, "hidden", False):
            continue
        text = getattr(param, "help", None)
        assert text, f"`fedfleet {' '.join(path)}`: {param.name} has no help text"
        # Shown whole: rich markup would eat an unescaped "[word]" (written "\\[word]").
        expected = _words(text.replace("\\[", "["))
        assert expected in shown, f"`fedfleet {' '.join(path)} --help` garbles {param.name}"
