"""Run state on disk, the run tracker's status/refusals, and the run CLI's bad input."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
import tomllib
from flwr.app import ConfigRecord, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from typer.testing import CliRunner

from coordinator.cli import coordinator_app, run_app
from coordinator.results import RoundRecord, write_results
from coordinator.run_state import RunState, app_pyproject, parse_run_toml
from coordinator.run_tracker import REFUSAL_PREFIX, RunTracker
from coordinator.superlink import CoordinatorSettings, superlink_command


def _run_toml(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(body)
    return path


def test_run_toml_aliases_and_defaults(tmp_path: Path) -> None:
    config = parse_run_toml(
        _run_toml(tmp_path, '[run]\ntask = "breast-cancer-mlp"\nsites = 3\nmin-sites = 2\n')
    )
    assert config["clients-per-round"] == 3 and config["min-clients"] == 2
    assert config["num-clients"] == 3


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('task = "x"\n', "one [run] table"),
        ('[run]\ntask = "nope"\n', "unknown task 'nope'"),
        ("[run]\nsites = 2\nmin-sites = 3\n", "min-clients (3) is larger"),
        ('[run]\nout-dir = "/tmp"\n', "run.out-dir is set by fedfleet"),
        ("[run]\nrounds = [1]\n", "must be a string, number or boolean"),
        ("[run\n", "is not valid TOML"),
        (
            '[run]\nnum-server-rounds = "3"\n',
            'run.toml: num-server-rounds = "3" is a string; expected an integer '
            "(write num-server-rounds = 3, without quotes)",
        ),
        ("[run]\nsites = 2.5\n", "sites = 2.5 is a number; expected an integer"),
        ('[run]\nlearning-rate = "fast"\n', 'learning-rate = "fast" is a string; expected a'),
    ],
)
def test_bad_run_toml_is_named(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        parse_run_toml(_run_toml(tmp_path, body))
    assert message in str(excinfo.value)


def test_create_and_load_round_trip_with_a_flower_app(tmp_path: Path) -> None:
    # Execute
    state = RunState.create(tmp_path, {"task": "breast-cancer-mlp", "secagg": True, "seed": 3})
    state.flower_runs.append(2**63 + 5)  # uint64 Flower run ids survive JSON
    state.save()
    loaded = RunState.load(tmp_path, state.run_id)
    # Assert
    assert loaded.flower_runs == [2**63 + 5]
    assert loaded.run_config["out-dir"] == str(state.run_dir.resolve())
    app = tomllib.loads((state.app_dir / "pyproject.toml").read_text())
    assert app["tool"]["flwr"]["app"]["components"]["serverapp"] == "coordinator.app:app"
    assert app["tool"]["flwr"]["app"]["config"]["secagg"] is True
    assert app["tool"]["flwr"]["app"]["config"]["run-id"] == state.run_id
    assert not loaded.finished and loaded.completed_rounds == 0


def test_run_folders_are_private_whatever_the_umask(tmp_path: Path, task_identity: None) -> None:
    """Issue 14: a coordinator run's folders 0700 and its files 0600."""
    # Prepare
    old = os.umask(0)
    try:
        # Execute: create the run, track a refusal, write results
        state = RunState.create(tmp_path / "state", {"task": "breast-cancer-mlp", "seed": 3})
        tracker = RunTracker.for_run({"run-id": state.run_id, "out-dir": str(state.run_dir)})
        grid = tracker.wrap(FakeGrid())
        list(grid.get_node_ids())
        messages = [
            grid.create_message(
                RecordDict({"config": ConfigRecord({"server-round": 1})}), "train", n, "1"
            )
            for n in (1, 2, 3)
        ]
        list(grid.send_and_receive(messages, timeout=30))
        write_results(state.run_dir, config={}, rounds=[], state_dict=None)
    finally:
        os.umask(old)
    # Assert
    paths = [tmp_path / "state", *(tmp_path / "state").rglob("*")]
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode) for p in paths}
    assert {"refusals.jsonl", "run.json", "metrics.json", "status.json"} <= {p.name for p in paths}
    for path in paths:
        assert modes[str(path.relative_to(tmp_path))] == (0o700 if path.is_dir() else 0o600), modes


def test_app_pyproject_quotes_strings() -> None:
    text = app_pyproject({"partition": 'a"b', "lr": 0.5, "on": False})
    assert tomllib.loads(text)["tool"]["flwr"]["app"]["config"] == {
        "partition": 'a"b',
        "lr": 0.5,
        "on": False,
    }


class FakeGrid(Grid):
    """Replies to every message; node 3 refuses by policy."""

    def __init__(self) -> None:
        self.nodes = [1, 2, 3]

    def set_run(self, run: Run) -> None:  # pragma: no cover - unused
        pass

    @property
    def run(self) -> Run:  # pragma: no cover - unused
        raise NotImplementedError

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # type: ignore[no-untyped-def]
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # pragma: no cover
        return []

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # pragma: no cover
        return []

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies = []
        for m in messages:
            if m.metadata.dst_node_id == 3:
                error = Error(ErrorCode.MOD_FAILED_PRECONDITION, REFUSAL_PREFIX + "not allowed")
                reply = Message(error, reply_to=m)
            else:
                reply = Message(RecordDict(), reply_to=m)
            reply.metadata.__dict__["_src_node_id"] = m.metadata.dst_node_id
            replies.append(reply)
        return replies


@pytest.fixture
def task_identity() -> Iterator[None]:
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def test_tracker_writes_what_it_waits_for_and_records_refusals(
    tmp_path: Path, task_identity: None
) -> None:
    # Prepare
    tracker = RunTracker.for_run({"run-id": "run-x", "out-dir": str(tmp_path)})
    grid = tracker.wrap(FakeGrid())
    # Execute: connect phase, then one round's exchange
    assert list(grid.get_node_ids()) == [1, 2, 3]
    connecting = json.loads((tmp_path / "status.json").read_text())
    messages = [
        grid.create_message(
            RecordDict({"config": ConfigRecord({"server-round": 4})}), "train", n, "4"
        )
        for n in (1, 2, 3)
    ]
    replies = list(grid.send_and_receive(messages, timeout=30))
    record = RoundRecord(round=4, accuracy=0.5, loss=1.0, duration_s=1.0, clients=2, selected=3)
    tracker.annotate(record)
    # Assert
    assert connecting["phase"] == "waiting-for-sites" and connecting["connected"] == [1, 2, 3]
    assert len(replies) == 3
    (refusal,) = [json.loads(x) for x in (tmp_path / "refusals.jsonl").read_text().splitlines()]
    assert refusal == {**refusal, "round": 4, "node-id": 3, "reason": "not allowed"}
    assert record.extra["refused"] == 1.0
    assert json.loads((tmp_path / "status.json").read_text())["phase"] == "round-done"


def test_simulation_runs_get_a_tracker_that_does_nothing(tmp_path: Path) -> None:
    grid = FakeGrid()
    tracker = RunTracker.for_run({"out-dir": str(tmp_path)})
    assert tracker.wrap(grid) is grid
    record = RoundRecord(round=1, accuracy=0.5, loss=1.0, duration_s=1.0, clients=2, selected=3)
    tracker.annotate(record)
    assert record.extra == {} and not any(tmp_path.iterdir())


def _coordinator(tmp_path: Path) -> Path:
    path = tmp_path / "coordinator.toml"
    path.write_text('[superlink]\naddress = "127.0.0.1:9999"\n')
    return path


def test_status_shows_rounds_refusals_and_the_current_wait(tmp_path: Path) -> None:
    # Prepare: a run folder as the ServerApp leaves it mid-run
    coordinator = _coordinator(tmp_path)
    settings = CoordinatorSettings.load(coordinator)
    state = RunState.create(
        settings.state_dir, {"task": "breast-cancer-mlp", "num-server-rounds": 3}
    )
    (settings.state_dir / "sites.json").write_text(
        json.dumps({"st-marys": {"node-id": 11}, "city": {"node-id": 12}})
    )
    (state.run_dir / "metrics.json").write_text(
        json.dumps(
            {
                "rounds": [
                    {
                        "round": 1,
                        "accuracy": 0.9,
                        "clients": 1,
                        "selected": 2,
                        "refused": 1.0,
                        "applied": True,
                        "duration_s": 3.0,
                    }
                ]
            }
        )
    )
    (state.run_dir / "refusals.jsonl").write_text(
        json.dumps({"round": 1, "node-id": 12, "reason": "budget used up"}) + "\n"
    )
    (state.run_dir / "status.json").write_text(
        json.dumps(
            {
                "phase": "waiting-for-replies",
                "round": 2,
                "waiting_for": [11, 12],
                "deadline": "12:00",
                "updated": "11:59",
            }
        )
    )
    # Execute
    result = CliRunner().invoke(run_app, ["status", state.run_id, "-c", str(coordinator)])
    # Assert
    assert result.exit_code == 0, result.output
    assert "round 1/3" in result.output
    assert "round 1: accuracy=0.9000 sites=1/2 refused=1" in result.output
    assert "refused in round 1 by city: budget used up" in result.output
    assert "round 2: waiting for st-marys, city until 12:00" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["status", "run-nope"], "no run 'run-nope'"),
        (["resume", "run-nope"], "no run 'run-nope'"),
    ],
)
def test_run_cli_bad_input_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(run_app, [*args, "-c", str(_coordinator(tmp_path))])
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output


def test_submit_with_bad_run_toml_writes_no_run(tmp_path: Path) -> None:
    coordinator = _coordinator(tmp_path)
    bad = _run_toml(tmp_path, '[run]\ntask = "nope"\n')
    result = CliRunner().invoke(run_app, ["submit", "--config", str(bad), "-c", str(coordinator)])
    assert result.exit_code == 2 and "unknown task" in result.output
    assert not (tmp_path / "state" / "runs").exists()


def test_resume_of_a_finished_run_is_refused(tmp_path: Path) -> None:
    coordinator = _coordinator(tmp_path)
    state = RunState.create(
        tmp_path / "state", {"task": "breast-cancer-mlp", "num-server-rounds": 1}
    )
    (state.run_dir / "model.pt").write_bytes(b"x")
    (state.run_dir / "metrics.json").write_text(json.dumps({"rounds": [{"round": 1}]}))
    result = CliRunner().invoke(run_app, ["resume", state.run_id, "-c", str(coordinator)])
    assert result.exit_code == 2 and "already finished" in result.output


def test_coordinator_config_errors_and_missing_certificates(tmp_path: Path) -> None:
    bad = tmp_path / "c.toml"
    bad.write_text('[superlink]\naddress = "nope"\n')
    result = CliRunner().invoke(coordinator_app, ["up", "--config", str(bad)])
    assert result.exit_code == 2 and "must be host:port" in result.output
    result = CliRunner().invoke(coordinator_app, ["up", "--config", str(_coordinator(tmp_path))])
    assert result.exit_code == 2 and "fedfleet certs create" in result.output


def test_superlink_command_turns_on_tls_auth_and_persistence(tmp_path: Path) -> None:
    settings = CoordinatorSettings.load(_coordinator(tmp_path))
    command = superlink_command(settings)
    for flag in ("--ssl-certfile", "--ssl-keyfile", "--ssl-ca-certfile", "--database"):
        assert flag in command
    assert "--enable-supernode-auth" in command and "--insecure" not in command
    assert "--disable-runtime-dependency-installation" in command
