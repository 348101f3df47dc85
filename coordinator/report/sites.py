"""Each site's audit-log verdict and privacy ledger, from the site's own commands.

Verifying a site's audit log needs its audit key (``edge_client.audit``): the site checks
it, not a third party. A report therefore runs the site's commands on the site's
``site.toml`` (where the compliance office has the site's folder, or the site runs the
report itself): ``fedfleet site audit --verify --json`` (the verdict of
``edge_client.audit.verify_log``), ``fedfleet site audit --json`` (what was sent, by run
and round) and ``fedfleet site budget --json --no-prv`` (ε spent against the site's
budget). The coordinator never imports the site runtime (DESIGN, tests/test_layers.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TIMEOUT_S = 120.0
# The site's commands, run with this interpreter (the same installed fedfleet).
_SITE_CLI = ("-c", "from edge_client.site_cli import app; app()")


@dataclass(frozen=True)
class SiteEvidence:
    """What one site's commands said. ``verdict``: the ``--verify --json`` object (``ok``,
    ``entries``, ``problem``, ``note``, ``authenticated``, ``path``, ``site``); ``rounds``:
    the rounds in which it sent a training reply for this run (None when its log failed
    verification: a tampered log says nothing trustworthy); ``budget``: its ledger rows."""

    config: Path
    site: str
    verdict: dict[str, Any]
    rounds: list[int] | None = None
    budget: list[dict[str, Any]] = field(default_factory=list)


class SiteCommandError(RuntimeError):
    """A site's command could not run (bad site.toml, missing files); one line."""


def _site_command(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *_SITE_CLI, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _error_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {done.returncode}"


def site_evidence(config: Path, *, flower_runs: list[int]) -> SiteEvidence:
    """Ask the site at ``config`` (its ``site.toml``) for its verdict, rounds and budget.

    ``flower_runs``: the Flower run ids of this run (``run.json``); the site's audit
    entries of those runs give its rounds (none when the run folder records no run id).
    """
    config = Path(config)
    if not config.is_file():
        raise SiteCommandError(f"--site {config}: no such site.toml; pass the site's config file")
    verify = _site_command(["audit", "--config", str(config), "--verify", "--json"])
    verdicts = _json_lines(verify.stdout)
    if not verdicts:  # the command refused the site.toml itself
        raise SiteCommandError(f"--site {config}: {_error_line(verify)}")
    verdict = verdicts[0]
    rounds: set[int] | None = None
    if verdict.get("ok"):
        rounds = set()
        listing = _site_command(["audit", "--config", str(config), "--json"])
        for entry in _json_lines(listing.stdout):
            if (
                entry.get("run") in flower_runs
                and str(entry.get("type", "")).startswith("train")
                and entry.get("kind") == "reply"
                and isinstance(entry.get("round"), int)
            ):
                rounds.add(int(entry["round"]))
    budget = _site_command(["budget", "--config", str(config), "--json", "--no-prv"])
    return SiteEvidence(
        config=config,
        site=str(verdict.get("site", config.parent.name)),
        verdict=verdict,
        rounds=None if rounds is None else sorted(rounds),
        budget=_json_lines(budget.stdout),
    )
