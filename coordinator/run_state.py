"""Persisted state of a deployment run: everything needed to see it and to resume it.

A run lives in ``<state>/runs/<run-id>/``:

* ``run.json`` — run id, the full run config, creation time, the Flower run ids that
  executed it (a resume starts a new Flower run for the same fedfleet run);
* ``app/pyproject.toml`` — the Flower App submitted with ``flwr run``: it names the
  installed ``coordinator.app:app``/``edge_client.app:app`` and carries the run config;
* written by the ServerApp (``out-dir`` is the run folder): ``checkpoint.pt`` after
  every completed round (see :mod:`coordinator.checkpoint`), ``metrics.json``/``.csv``,
  ``status.json`` (what the run waits for), ``refusals.jsonl`` and, at the end,
  ``model.pt``.

Resuming resubmits the same app: the round loop loads ``checkpoint.pt`` and continues
after the last completed round, so no round is lost or applied twice.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from coordinator.config import RunConfig, toml_type_error
from coordinator.results import atomic_write_bytes
from edge_client.protocol import keys as k

ALIASES = {"min-sites": "min-clients", "sites": "clients-per-round"}


def parse_run_toml(path: Path) -> dict[str, Any]:
    """The run config of a ``run.toml`` (its ``[run]`` table), validated.

    Aliases: ``min-sites`` = ``min-clients`` (quorum), ``sites`` = ``clients-per-round``.
    ``num-clients`` defaults to ``clients-per-round`` (every site may be chosen).
    """
    if not path.is_file():
        raise ValueError(f"run config {path} does not exist")
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path} is not valid TOML: {exc}") from None
    extra = set(doc) - {"run"}
    if extra or not isinstance(doc.get("run"), dict):
        raise ValueError(f"{path.name}: put the run's keys in one [run] table")
    run_config: dict[str, Any] = {}
    core_types = RunConfig.key_types()
    for key, value in doc["run"].items():
        if isinstance(value, dict | list):
            raise ValueError(f"{path.name}: run.{key} must be a string, number or boolean")
        name = ALIASES.get(key, key)
        if name in core_types and (error := toml_type_error(key, value, core_types[name])):
            raise ValueError(f"{path.name}: {error}")
        run_config[name] = value
    for reserved in ("out-dir", k.RC_RUN_ID):
        if reserved in run_config:
            raise ValueError(f"{path.name}: run.{reserved} is set by fedfleet; remove it")
    run_config.setdefault("clients-per-round", 1)
    run_config.setdefault("num-clients", run_config["clients-per-round"])
    RunConfig.from_run_config(run_config)
    return run_config


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def app_pyproject(run_config: Mapping[str, Any]) -> str:
    """A minimal Flower App whose components are the installed fedfleet apps."""
    lines = [
        "[build-system]",
        'requires = ["hatchling"]',
        'build-backend = "hatchling.build"',
        "",
        "[project]",
        'name = "fedfleet-run"',
        'version = "1.0.0"',
        "dependencies = []",
        "",
        "[tool.flwr.app]",
        'publisher = "fedfleet"',
        "",
        "[tool.flwr.app.components]",
        'serverapp = "coordinator.app:app"',
        'clientapp = "edge_client.app:app"',
        "",
        "[tool.flwr.app.config]",
    ]
    lines += [f"{key} = {_toml_value(value)}" for key, value in run_config.items()]
    return "\n".join(lines) + "\n"


@dataclass
class RunState:
    """One run's folder and its ``run.json``."""

    run_dir: Path
    run_id: str
    run_config: dict[str, Any]
    created: str
    flower_runs: list[int]

    @classmethod
    def create(cls, state_dir: Path, run_config: Mapping[str, Any]) -> RunState:
        """A new run folder with its app; the run id is fresh and random."""
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
        run_id = f"run-{stamp}-{secrets.token_hex(3)}"
        run_dir = state_dir / "runs" / run_id
        config = dict(run_config)
        config["out-dir"] = str(run_dir.resolve())
        config[k.RC_RUN_ID] = run_id
        state = cls(
            run_dir=run_dir,
            run_id=run_id,
            run_config=config,
            created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            flower_runs=[],
        )
        atomic_write_bytes(run_dir / "app" / "pyproject.toml", app_pyproject(config).encode())
        state.save()
        return state

    @classmethod
    def load(cls, state_dir: Path, run_id: str) -> RunState:
        run_dir = state_dir / "runs" / run_id
        path = run_dir / "run.json"
        if not path.is_file():
            known = sorted(p.name for p in (state_dir / "runs").glob("*") if p.is_dir())
            raise ValueError(
                f"no run {run_id!r} in {state_dir}; known runs: {', '.join(known) or 'none'}"
            )
        doc = json.loads(path.read_text())
        return cls(
            run_dir=run_dir,
            run_id=doc["run-id"],
            run_config=doc["run-config"],
            created=doc["created"],
            flower_runs=[int(r) for r in doc["flower-runs"]],
        )

    @property
    def app_dir(self) -> Path:
        return self.run_dir / "app"

    def save(self) -> None:
        doc = {
            "run-id": self.run_id,
            "run-config": self.run_config,
            "created": self.created,
            "flower-runs": [str(r) for r in self.flower_runs],
        }
        atomic_write_bytes(self.run_dir / "run.json", json.dumps(doc, indent=2).encode())

    @property
    def num_rounds(self) -> int:
        return int(self.run_config.get("num-server-rounds", 3))

    def rounds(self) -> list[dict[str, Any]]:
        """Per-round metrics written so far (metrics.json ``rounds``)."""
        path = self.run_dir / "metrics.json"
        if not path.is_file():
            return []
        return list(json.loads(path.read_text()).get("rounds", []))

    def status(self) -> dict[str, Any]:
        """What the ServerApp last reported (status.json), or {} before it started."""
        path = self.run_dir / "status.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def refusals(self) -> list[dict[str, Any]]:
        path = self.run_dir / "refusals.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    @property
    def completed_rounds(self) -> int:
        return max((int(r["round"]) for r in self.rounds()), default=0)

    @property
    def finished(self) -> bool:
        """All rounds done and the final model written."""
        return (self.run_dir / "model.pt").is_file() and self.completed_rounds >= self.num_rounds
