"""``--app-workers auto`` (the default) under CPU load cannot hang: the quickstart-style
app runs 5 times in a row in this process (one forkserver for all, as a notebook or a
sweep would) while 2 busy processes, started and stopped here by PID, hold the cores.
Each run is bounded (a hang fails the test, never blocks it) and must end with every
round's replies, no worker ended for hanging, and no worker left behind."""

from __future__ import annotations

import faulthandler
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from simulation.app_calls import AppSource, WorkerPool
from simulation.flower_app import run_flower_app
from simulation.settings import SimulateSettings

APP = Path(__file__).parent / "flower_app"
RUN_BOUND_S = 120.0  # generous: the shared 2-core machine runs at load 15-30


def _hung(_signum: int, _frame: object) -> None:
    raise TimeoutError(f"a run did not end in {RUN_BOUND_S:g}s")


def _children() -> set[int]:
    import multiprocessing

    return {process.pid for process in multiprocessing.active_children() if process.pid}


@pytest.mark.slow
def test_auto_workers_under_cpu_load_finish_five_runs_in_a_row(tmp_path: Path) -> None:
    previous = signal.signal(signal.SIGALRM, _hung)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    modes: list[str] = []
    try:
        # the forkserver starts once per process (~10 s at load 15 here); the runs after
        # the first reuse it, so start it first for the runs to reach their workers
        signal.alarm(int(RUN_BOUND_S))
        import torch  # noqa: F401  # as in a run, whose app imported it: preloaded then

        source = AppSource("quickstart_app.client_app:app", str(APP))
        WorkerPool(source, 2, 1).start().close()
        signal.alarm(0)
        for number in range(5):
            settings = SimulateSettings(
                app=str(APP), clients=12, app_config="num-server-rounds=3", seed=number
            )
            out = tmp_path / f"run-{number}"
            out.mkdir()
            signal.alarm(int(RUN_BOUND_S))  # a hang fails the run (TimeoutError)
            faulthandler.dump_traceback_later(RUN_BOUND_S - 2)  # where it hung, if it did
            try:
                with open(out / "console.txt", "w") as fh:
                    run_flower_app(settings, out_dir=out, console=Console(file=fh), quiet=True)
            finally:
                signal.alarm(0)
                faulthandler.cancel_dump_traceback_later()
            doc = json.loads((out / "exchanges.json").read_text())
            rows = [(e["message_type"], e["messages"], e["replies"]) for e in doc["exchanges"]]
            assert rows == [("train", 6, 6), ("evaluate", 6, 6)] * 3
            assert doc["app_workers"]["workers"] >= 2 and doc["app_workers"]["stuck_calls"] == 0
            modes += [e["calls"] for e in doc["exchanges"]]
            deadline = time.monotonic() + 10  # the run's workers end with it
            while _children() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not _children()
    finally:
        signal.signal(signal.SIGALRM, previous)
        for process in busy:
            process.kill()
            process.wait()
    assert set(modes) == {"inprocess", "workers"}  # measured in process, then in workers
    print(f"calls per exchange over the 5 runs: {modes}")
