"""One Flower App, unchanged, on fedfleet (``fedfleet simulate --app``) and on Flower's
own simulation engine (a ``flower-superlink --simulation`` started here, then
``flwr run APP --stream``), one after the other, each timed end to end from launch to
exit (Flower's: SuperLink start included, as a user waits for it), with the peak memory
of each process tree (Flower's: SuperLink, SuperExec, Ray and app processes).

The app's results are compared from the line ``RESULT {json}`` its ServerApp logs
(metrics per round and a hash of the final model): "identical" when the JSON is equal,
else the largest relative difference of a metric. Flower's engine runs with its
defaults (``num-supernodes`` from ``--clients``, its default client resources).

Used by ``bench/simulation.py --app DIR`` and ``bench/flower_examples.py``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for simulation/

from proc_tree import rss_bytes, tree  # bench/ is the script's folder

from simulation.flower_engine import (
    SuperLink,
    flower_env,
    flower_home,
    flwr_run_command,
    stop_process,
    write_connection,
)

FEDFLEET = [sys.executable, "-c", "from fedfleet.cli import main; main()"]
GOAL_X = 5.0  # issue 23: >= 5x end to end at 100 clients, quickstart-pytorch-style app
RESULT_MARK = "RESULT "


@dataclass
class TreeSampler:
    """Peak summed RSS of the trees under ``roots`` (sampled every 0.2 s)."""

    roots: list[int]
    peak_bytes: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = set().union(*(tree(r) for r in self.roots))
            self.peak_bytes = max(self.peak_bytes, sum(rss_bytes(p) for p in pids))
            self._stop.wait(0.2)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_bytes / 2**20


@dataclass
class AppRun:
    """One engine's run of the app."""

    engine: str
    ok: bool
    wall_s: float
    peak_mib: float
    result: dict[str, Any] | None
    output: str  # stdout and stderr together

    def shows(self, text: str) -> bool:
        return text in self.output


def parse_result(output: str) -> dict[str, Any] | None:
    """The last ``RESULT {json}`` line the ServerApp logged."""
    found = None
    for line in output.splitlines():
        at = line.find(RESULT_MARK + "{")
        if at >= 0:
            try:
                found = json.loads(line[at + len(RESULT_MARK) :])
            except ValueError:
                continue
    return found


def run_fedfleet(
    app: Path,
    *,
    clients: int,
    run_config: str = "",
    workers: str = "auto",
    seed: int = 0,
    extra: tuple[str, ...] = (),
    timeout_s: float = 1800,
) -> AppRun:
    """``fedfleet simulate --app APP`` in a fresh process."""
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0")
    with tempfile.TemporaryDirectory(prefix="bench-app-") as tmp:
        command = [
            *FEDFLEET,
            "simulate",
            "--app",
            str(app),
            "--clients",
            str(clients),
            "--seed",
            str(seed),
            "--app-workers",
            workers,
            "--out",
            str(Path(tmp) / "run"),
            *(["--run-config", run_config] if run_config else []),
            *extra,
        ]
        launch = time.perf_counter()
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        sampler = TreeSampler([proc.pid])
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        wall = time.perf_counter() - launch
        text = out.decode(errors="replace")
    return AppRun("fedfleet", proc.returncode == 0, wall, sampler.stop(), parse_result(text), text)


def run_flower(app: Path, *, clients: int, run_config: str = "", timeout_s: float = 1800) -> AppRun:
    """The app on Flower's simulation engine: SuperLink start to ``flwr run`` exit."""
    with flower_home() as home:
        launch = time.perf_counter()
        link = SuperLink.start(flwr_home=home)
        sampler = TreeSampler([link.process.pid])
        flwr = None
        try:
            write_connection(home, address=link.address)
            command = flwr_run_command(app.resolve(), num_supernodes=clients)
            if run_config:
                command += ["--run-config", run_config]
            flwr = subprocess.Popen(
                command,
                env=flower_env(home),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=home,
                start_new_session=True,
            )
            sampler.roots.append(flwr.pid)
            out, _ = flwr.communicate(timeout=timeout_s)
            wall = time.perf_counter() - launch
            text = out.decode(errors="replace")
            ok = flwr.returncode == 0
        finally:
            if flwr is not None:
                stop_process(flwr)
            link.stop()
            peak = sampler.stop()
            log = link.log_path.read_text(errors="replace") if link.log_path.exists() else ""
    return AppRun("flower", ok, wall, peak, parse_result(text), text + "\n" + log)


def _numbers(doc: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(doc, dict):
        out: dict[str, Any] = {}
        for key, value in doc.items():
            out.update(_numbers(value, f"{prefix}/{key}"))
        return out
    return {prefix: doc}


def compare(a: dict[str, Any] | None, b: dict[str, Any] | None) -> str:
    """ "identical", "close (max rel. diff X)", "differ (...)" or "n/a"."""
    if a is None or b is None:
        return "n/a"
    if a == b:
        return "identical"
    left, right = _numbers(a), _numbers(b)
    if set(left) != set(right):
        return "differ (other keys)"
    worst = 0.0
    for key, value in left.items():
        other = right[key]
        if isinstance(value, int | float) and isinstance(other, int | float):
            scale = max(abs(value), abs(other), 1e-12)
            worst = max(worst, abs(value - other) / scale)
        elif value != other and not key.endswith("model_sha256"):
            return f"differ ({key})"
    verdict = "close" if worst <= 1e-6 else "differ"
    return f"{verdict} (max rel. diff {worst:.1e})"


def side_by_side(
    app: Path, *, clients: int, run_config: str = "", workers: str = "auto"
) -> list[str]:
    """Both engines on ``app``; the table's lines (also printed)."""
    print(f"fedfleet simulate --app {app} --clients {clients} ...", flush=True)
    ours = run_fedfleet(app, clients=clients, run_config=run_config, workers=workers)
    print(f"Flower's simulation engine, {clients} supernodes ...", flush=True)
    theirs = run_flower(app, clients=clients, run_config=run_config)
    lines = [f"{'engine':<9} {'ok':>3} {'wall s':>8} {'peak MiB':>9}"]
    for run in (theirs, ours):
        lines.append(
            f"{run.engine:<9} {'y' if run.ok else 'n':>3} {run.wall_s:>8.1f} {run.peak_mib:>9.0f}"
        )
    ratio = theirs.wall_s / ours.wall_s if ours.wall_s > 0 else math.nan
    lines.append(f"results: {compare(ours.result, theirs.result)}")
    lines.append(
        f"flower / fedfleet: wall {ratio:.1f}x, peak memory {theirs.peak_mib / max(ours.peak_mib, 1):.1f}x; "
        f"goal >= {GOAL_X:.0f}x end to end at 100 clients (quickstart-pytorch style): "
        f"{'met' if ratio >= GOAL_X else 'not met'}"
    )
    if not ours.ok:
        lines.append("fedfleet failed: " + ours.output[-1500:])
    if not theirs.ok:
        lines.append("flower failed: " + theirs.output[-1500:])
    for line in lines:
        print(line)
    return lines
