"""The root command starts light: help, the version and bad input answer without torch.

``fedfleet`` imports a sub-app only when its command runs, and each package's ``cli``
module imports torch, Flower, FastAPI, SQLModel and httpx inside its command functions,
so ``fedfleet --help``, ``fedfleet --version``, every ``fedfleet CMD --help`` and a
command refusing bad input answer in a fraction of a second. Wall times depend on the
machine; what is checked here is what makes them slow: the heavy modules loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest
import tomllib
import typer
from typer.testing import CliRunner

import fedfleet
from fedfleet import cli as root_cli

ROOT = Path(__file__).resolve().parent.parent
FEDFLEET = [sys.executable, "-c", "from fedfleet.cli import main; main()"]
HEAVY = ("torch", "opacus", "flwr", "fastapi", "sqlmodel", "sqlalchemy", "httpx", "uvicorn", "paho")
COMMANDS = [name for name, _, _ in root_cli._SUBAPPS]

# (arguments, exit code): every call a user makes to find their way, and one bad input.
CALLS = [
    (["--version"], 0),
    (["--help"], 0),
    *[([name, "--help"], 0) for name in COMMANDS],
    (["fleet", "token", "--help"], 0),
    (["site", "join", "--config", "/nonexistent/site.toml"], 2),
    (["fleet", "serve", "--log-level", "loud"], 2),
    (["fleet", "mqtt", "--password-file", "/nonexistent/fleet.pass"], 2),
    (["device", "run", "--config", "/nonexistent/device.toml"], 2),
]

_PROBE = textwrap.dedent(
    """
    import contextlib, io, json, sys
    from fedfleet.cli import build_app
    heavy = {heavy!r}
    report = []
    for args, _ in {calls!r}:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                build_app()(args, prog_name="fedfleet")
            except SystemExit as stop:
                code = stop.code or 0
        loaded = sorted(m for m in heavy if m in sys.modules)
        report.append({{"args": args, "code": code, "loaded": loaded}})
    print(json.dumps(report))
    """
)


def test_version_prints_the_version_and_exits_0() -> None:
    # Execute: a fresh process, as a user types it.
    result = subprocess.run(
        [*FEDFLEET, "--version"], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    # Assert: the version alone (the package's, which is pyproject's), no "Missing command".
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == fedfleet.__version__
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert fedfleet.__version__ == pyproject["project"]["version"]


def test_help_version_and_bad_input_load_no_heavy_module() -> None:
    # Prepare: one fresh interpreter runs every call in turn and notes what got loaded.
    code = _PROBE.format(heavy=HEAVY, calls=CALLS)
    # Execute
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # Assert: each call exits as expected and none has loaded a heavy module so far.
    for row, (args, expected) in zip(report, CALLS, strict=True):
        assert row["code"] == expected, f"fedfleet {' '.join(args)} exited {row['code']}"
        assert not row["loaded"], f"`fedfleet {' '.join(args)}` loaded {row['loaded']}"


def test_root_help_lists_every_command_with_its_help_without_importing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: importing any sub-app now fails the test.
    def refuse(target: str) -> None:
        raise AssertionError(f"--help imported {target}")

    monkeypatch.setattr(root_cli, "_load", refuse)
    # Execute
    result = CliRunner().invoke(root_cli.build_app(), ["--help"], env={"COLUMNS": "200"})
    # Assert
    assert result.exit_code == 0, result.output
    for name, _, help_text in root_cli._SUBAPPS:
        assert any(
            line.split()[1:2] == [name] and help_text in line for line in result.output.splitlines()
        ), f"{name} missing from --help:\n{result.output}"


def _fake_subapp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> None:
    """Mount module ``fake_cli`` (written with ``body``) as ``fedfleet fake``."""
    (tmp_path / "fake_cli.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "fake_cli", raising=False)
    monkeypatch.setitem(root_cli._BY_NAME, "fake", ("fake_cli:app", "A fake sub-app."))


def test_a_sub_app_missing_an_optional_extra_is_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a sub-app whose module needs a package that is not installed.
    _fake_subapp(tmp_path, monkeypatch, "import not_installed_extra_xyz\n")
    monkeypatch.delenv("FEDFLEET_STRICT_CLI", raising=False)
    # Execute
    result = CliRunner().invoke(root_cli.build_app(), ["fake", "--help"])
    # Assert: the command is unknown (a usage error), not a traceback.
    assert result.exit_code == 2
    assert "No such command 'fake'" in result.output
    assert "Traceback" not in result.output

    # Under FEDFLEET_STRICT_CLI=1 (the tests' setting) the broken import is an error.
    monkeypatch.setenv("FEDFLEET_STRICT_CLI", "1")
    strict = CliRunner().invoke(root_cli.build_app(), ["fake", "--help"])
    assert isinstance(strict.exception, ModuleNotFoundError)


def test_a_lazily_mounted_sub_app_runs_with_the_tables_name_and_help(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    _fake_subapp(
        tmp_path,
        monkeypatch,
        "import typer\n"
        "from fedfleet.cli_support import fail, sub_app\n"
        "app = sub_app(help='Its own help.')\n"
        "@app.command()\n"
        "def hello(name: str = 'x') -> None:\n"
        "    '''Say hello.'''\n"
        "    if name == 'bad':\n"
        "        fail('--name bad is not a name; give another')\n"
        "    typer.echo(f'hello {name}')\n",
    )
    app = root_cli.build_app()
    # Execute
    shown = CliRunner().invoke(app, ["fake", "--help"], env={"COLUMNS": "200"})
    ran = CliRunner().invoke(app, ["fake", "hello", "--name", "ada"])
    bad = CliRunner().invoke(app, ["fake", "hello", "--name", "bad"])
    # Assert
    assert shown.exit_code == 0 and "A fake sub-app." in shown.output
    assert "fake [OPTIONS] COMMAND" in shown.output and "Say hello." in shown.output
    assert ran.exit_code == 0 and ran.stdout == "hello ada\n"
    assert bad.exit_code == 2
    assert bad.stderr == "error: --name bad is not a name; give another\n"


def test_a_misspelt_command_gets_a_suggestion() -> None:
    result = CliRunner().invoke(root_cli.build_app(), ["flet"])
    assert result.exit_code == 2
    assert "Did you mean 'fleet'?" in result.output
    assert isinstance(typer.main.get_command(root_cli.build_app()), click.Group)


# `fedfleet simulate` refusing bad input: (arguments, the one line it prints). The
# settings validate before anything imports torch or Flower (tasks, strategies and
# the settings sections import them only where a run uses them).
SIMULATE_BAD_INPUT = [
    (
        ["--clients", "100", "--clients-per-round", "500"],
        "error: clients-per-round (500) is larger than clients (100); "
        "lower --clients-per-round or raise --clients",
    ),
    (
        ["--task", "nope"],
        "error: unknown task 'nope'; choose one of: breast-cancer-mlp, credit-scoring, digits-cnn, "
        "synthetic-logreg",
    ),
    (["--partition", "bogus"], "error: unknown partition 'bogus'"),
    (
        ["--dp", "weird"],
        "error: unknown dp mode 'weird'; choose one of: none, local, central, distributed",
    ),
    (["--config", "missing.toml"], "error: config file missing.toml does not exist"),
    (
        ["--config", "bad.toml"],
        'error: config file bad.toml: rounds = "3" is a string; expected an integer '
        "(write rounds = 3, without quotes)",
    ),
    (["--strategy", "nope"], "error: unknown strategy 'nope'; choose one of: bulyan,"),
    # DP and secure aggregation: their checks live apart from the Flower/Opacus code that
    # runs them (coordinator/privacy_checks.py); local DP loads the task's data (never
    # torch: a task's model lives apart from its data) only for δ < 1/N, after every
    # flag passed.
    (["--dp", "local", "--epsilon", "-1"], "error: dp epsilon -1.0 must be a positive number"),
    (
        ["--dp", "local", "--noise-multiplier", "-1"],
        "error: noise multiplier -1.0 gives no privacy with dp on",
    ),
    (["--dp", "local", "--clients", "0"], "error: num-clients must be >= 1"),
    *(
        (
            ["--task", task, "--dp", "local", "--epsilon", "2", "--delta", "0.5"],
            "error: dp delta 0.5 is not below 1/N",
        )
        for task in ("digits-cnn", "breast-cancer-mlp", "synthetic-logreg")
    ),
    (
        ["--dp", "central", "--epsilon", "2", "--strategy", "krum"],
        "error: dp=central bounds one client's influence on a mean of updates",
    ),
    (
        ["--dp", "distributed", "--secagg", "--epsilon", "2", "--secagg-clip", "0.1"],
        "error: secagg-clip 0.1 would clip the noisy DP shares",
    ),
    (
        ["--secagg", "--clients-per-round", "2"],
        "error: secure aggregation needs at least 3 clients per round (got 2)",
    ),
    (["--secagg", "--strategy", "krum"], "error: strategy krum needs every client's update"),
    (["--secagg", "--secagg-bits", "0"], "error: secagg-bits 0 must be between 2 and 32"),
]

_SIMULATE_PROBE = textwrap.dedent(
    """
    import json, sys
    from fedfleet.cli import main
    sys.argv = ["fedfleet", "simulate", *json.loads(sys.argv[1])]
    try:
        main()
    except SystemExit as stop:
        code = stop.code
    heavy = ("torch", "opacus", "flwr", "fastapi", "sqlalchemy")
    loaded = sorted(m for m in heavy if m in sys.modules)
    print(json.dumps({"code": code, "loaded": loaded}))
    """
)


@pytest.mark.parametrize(
    ("args", "line"), SIMULATE_BAD_INPUT, ids=[" ".join(a) for a, _ in SIMULATE_BAD_INPUT]
)
def test_simulate_refuses_bad_input_without_torch_opacus_or_flower(
    tmp_path: Path, args: list[str], line: str
) -> None:
    # Prepare: a TOML file with a wrongly typed value, and a fresh interpreter per call.
    (tmp_path / "bad.toml").write_text('rounds = "3"\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # Execute
    result = subprocess.run(
        [sys.executable, "-c", _SIMULATE_PROBE, json.dumps(args)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    # Assert: exit 2, the one line, and no heavy module loaded on the way.
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["code"] == 2, result.stderr
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(line), result.stderr
    assert not report["loaded"], f"`fedfleet simulate {' '.join(args)}` loaded {report['loaded']}"
