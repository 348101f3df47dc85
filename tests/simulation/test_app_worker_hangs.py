"""The worker pool's bounded waits (simulation/app_calls.py): a worker that never
starts its calls, or whose call outlives its timeout, is ended by PID, said in one
line, and replaced; the push completes with the results it would have had in process
(never started: rerun here, seeded) or without the late reply (as Flower drops it).

The ClientApp is a module written here; the workers load it from its directory."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from uuid import uuid4

import pytest

from simulation.app_calls import AppCalls, AppSource

CLIENT_APP = """
import multiprocessing
import time

import numpy as np
from flwr.app import Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg, context):
    in_worker = multiprocessing.current_process().name.startswith("clientapp-worker")
    if in_worker and context.node_id == msg.content["config"]["sleep-node"]:
        time.sleep(msg.content["config"]["sleep-s"])  # a call slower than its timeout
    calls = context.state["calls"]["n"] + 1 if "calls" in context.state else 1
    context.state["calls"] = MetricRecord({"n": calls})
    draw = float(np.random.random())
    return Message(RecordDict({"metrics": MetricRecord({"draw": draw, "calls": calls})}),
                   reply_to=msg)
"""


@pytest.fixture
def source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AppSource:
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_task_id", "_run_id", "_node_id"):  # as the in-process grid sets them
        monkeypatch.setattr(TaskIdentity, name, 1)
    package = tmp_path / "hang_app"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "client_app.py").write_text(CLIENT_APP)
    return AppSource("hang_app.client_app:app", str(tmp_path))


def _push(nodes: int, *, sleep_node: int = -1, sleep_s: float = 0.0) -> tuple[list, list]:
    from flwr.app import ConfigRecord, Context, Message, RecordDict

    messages, contexts = [], []
    for node in range(nodes):
        config = ConfigRecord({"sleep-node": sleep_node, "sleep-s": sleep_s})
        message = Message(RecordDict({"config": config}), node, "train")
        message.metadata.__dict__["_message_id"] = uuid4().hex
        messages.append(message)
        contexts.append(
            Context(run_id=1, node_id=node, node_config={}, state=RecordDict(), run_config={})
        )
    return messages, contexts


def _draws(results: list) -> list[float | None]:
    return [
        None if outcome is None else outcome.reply.content["metrics"]["draw"]
        for outcome, _ in results
    ]


def _in_process(app: object, pushes: list[int]) -> list[list[float | None]]:
    calls = AppCalls(app, seed=5)  # type: ignore[arg-type]
    return [_draws(calls.run(*_push(nodes), timeout=None)) for nodes in pushes]


def _gone(pid: int) -> bool:
    try:
        return "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True


def test_a_worker_that_never_starts_its_calls_is_ended_and_its_calls_rerun_here(
    source: AppSource, capsys: pytest.CaptureFixture[str]
) -> None:
    app = source.load()
    calls = AppCalls(app, seed=5, workers=2, source=source)
    try:
        first = _draws(calls.run(*_push(4), timeout=None))  # starts the pool
        assert calls.pool is not None
        calls.pool.ack_s = 2.0
        stopped = calls.pool.pids[0]
        os.kill(stopped, signal.SIGSTOP)  # a hung worker: neither acknowledges nor replies
        started = time.monotonic()
        second = _draws(calls.run(*_push(8), timeout=None))
        assert time.monotonic() - started < 20  # bounded: the push never waits for good
        # the same draws as in process for the same seed: its calls ran here instead
        assert [first, second] == _in_process(app, [4, 8])
        assert None not in second and calls.stuck >= 1
        assert _gone(stopped) and stopped not in calls.pool.pids  # ended by PID, replaced
        err = capsys.readouterr().err
        assert f"ClientApp worker pid {stopped} gave no reply within 2s" in err
        assert "rerun in process" in err
    finally:
        calls.close()


def test_a_worker_whose_call_outlives_its_timeout_is_ended_and_the_reply_dropped(
    source: AppSource, capsys: pytest.CaptureFixture[str]
) -> None:
    app = source.load()
    calls = AppCalls(app, seed=5, workers=2, source=source)
    try:
        started = time.monotonic()
        results = calls.run(*_push(8, sleep_node=3, sleep_s=120.0), timeout=1.0)
        assert time.monotonic() - started < 30  # not the 120 s the call would take
        draws = _draws(results)
        assert draws[3] is None  # late: missing, as Flower's send_and_receive drops it
        expected = _in_process(app, [8])[0]
        assert draws[:3] + draws[4:] == expected[:3] + expected[4:]
        assert calls.pool is not None and len(calls.pool.pids) == 2  # replaced
        assert all(not _gone(pid) for pid in calls.pool.pids)
        err = capsys.readouterr().err
        assert "gave no reply within 1s timeout + 2s (its call is late: dropped)" in err
    finally:
        pids = calls.pool.pids if calls.pool is not None else []
        calls.close()
    assert all(_gone(pid) for pid in pids)  # close ends every worker
