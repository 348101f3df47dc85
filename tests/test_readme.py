"""Every ``fedfleet …`` line in README.md's fenced code blocks runs as written.

How lines are chosen and run:

* A line counts when, inside a fenced block, it starts with ``fedfleet `` (so ``$ fedfleet
  …`` transcripts of an error and prose mentions are not run); a trailing ``# comment``
  is dropped.
* Lines that need material a test on one machine cannot have are skipped by the rule in
  ``NEEDS_EXTERNAL``: a command prefix and what it needs (a running coordinator and
  sites, the fleet's API with a token, a broker, a long-running server, the reader's own
  Flower App). Everything else runs, in README order, in one temporary folder, so a
  command can use what an earlier one wrote (``site init`` writes ``site.toml``).
* ``simulate`` runs small: ``--clients 20`` (a larger ``--clients-per-round`` becomes 10),
  ``--rounds 1``, and ``--out`` inside the folder; every other flag is kept as written.
* Between ``site init`` and the other site commands the test does what the README tells
  the site to do: fill in the data schema and put the operator's ``ca.crt`` next to it.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
FEDFLEET = str(Path(sys.executable).parent / "fedfleet")

# prefix → what it needs that a test on one machine does not have
NEEDS_EXTERNAL = {
    "fedfleet run ": "a running coordinator (`coordinator up`) with registered sites",
    "fedfleet site join": "a running coordinator to join",
    "fedfleet image build --model": "the fleet's model registry ($FEDFLEET_TOKEN)",
    "fedfleet rollout ": "the fleet's API ($FEDFLEET_TOKEN) and enrolled devices",
    "fedfleet fleet serve": "it serves until stopped (the test runs `fleet migrate` instead, "
    "which creates the same database)",
    "fedfleet fleet token create --role": "the fleet's API and the admin token bootstrapped above",
    "fedfleet fleet mqtt": "an MQTT broker and the fleet's database, and runs until stopped",
    "fedfleet simulate --app ./my-flower-app": "the reader's own Flower App",
}

SMALL_CLIENTS = 20


def readme_commands(text: str) -> list[str]:
    """The ``fedfleet …`` and ``export NAME=VALUE`` lines of the fenced code blocks,
    comments removed, in order."""
    commands, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced and line.startswith(("fedfleet ", "export ")):
            commands.append(" ".join(shlex.split(line, comments=True)))
    return commands


def apply_export(command: str, env: dict[str, str]) -> None:
    """``export NAME=VALUE`` into ``env``; a placeholder value (``...``) is left out."""
    name, _, value = command.removeprefix("export ").partition("=")
    if "..." not in value:
        env[name] = value


def external_need(command: str) -> str | None:
    return next((need for p, need in NEEDS_EXTERNAL.items() if command.startswith(p)), None)


def _set(args: list[str], flag: str, value: str) -> None:
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]


def small(args: list[str], out: Path) -> list[str]:
    """``simulate`` arguments made small (see the module docstring); others unchanged."""
    if args[:1] != ["simulate"]:
        return args
    args = list(args)
    _set(args, "--clients", str(SMALL_CLIENTS))
    if "--clients-per-round" in args:
        given = int(args[args.index("--clients-per-round") + 1])
        _set(args, "--clients-per-round", str(min(given, 10)))
    _set(args, "--rounds", "1")
    if "--out" not in args:
        args += ["--out", str(out)]
    return args


def prepare_site(folder: Path) -> None:
    """What the README's site does after `site init`: its data schema and the CA file."""
    config = folder / "site.toml"
    text = config.read_text()
    text = re.sub(
        r"# age = \"int\"\n# mean-radius = \"float\"\n", 'age = "int"\nradius = "float"\n', text
    )
    config.write_text(text)
    (folder / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")


COMMANDS = readme_commands(README.read_text())


def test_readme_has_runnable_and_skipped_commands() -> None:
    runnable = [c for c in COMMANDS if external_need(c) is None and c.startswith("fedfleet ")]
    assert any(c.startswith("fedfleet simulate") for c in runnable)
    assert any(c.startswith("fedfleet site init") for c in runnable)
    assert len(runnable) < len(COMMANDS)  # the rule skips something, and only that


@pytest.mark.slow
def test_every_readme_command_runs_as_written(tmp_path: Path) -> None:
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", COLUMNS="200")
    env.pop("FEDFLEET_FLEET_DATABASE_URL", None)  # the fleet's database: in tmp_path
    failures = []
    for i, command in enumerate(COMMANDS):
        if command.startswith("export "):
            apply_export(command, env)
            continue
        if command.startswith("fedfleet fleet serve"):
            command = "fedfleet fleet migrate"  # the database `serve` would create
        elif external_need(command) is not None:
            continue
        args = small(shlex.split(command)[1:], tmp_path / f"run-{i}")
        result = subprocess.run(
            [FEDFLEET, *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if result.returncode != 0:
            failures.append(f"{command}\n  ran as: {shlex.join(args)}\n  {result.stderr[-600:]}")
        if args[:2] == ["site", "init"]:
            prepare_site(tmp_path)
    assert not failures, "README commands failed:\n" + "\n".join(failures)
