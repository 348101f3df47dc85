"""``fedfleet policy apply|list|show|approve`` as the real command against a real
``fedfleet fleet serve`` with a token: apply → show → apply again → version 2, and every
bad input refused with one line on stderr and exit 2, nothing stored."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from firmware_images.keys import generate_keypair
from fleet.audit import Actor
from fleet.db import make_engine, session_scope
from fleet.models.auth import Role

sys.path.insert(0, str(Path(__file__).parents[1] / "e2e"))
from ota_testkit import enroll_devices

FEDFLEET = os.path.join(os.path.dirname(sys.executable), "fedfleet")
pytestmark = pytest.mark.slow

POLICY = """group = "wards"
targets = ["cpu-x86"]

[gates]
min_accuracy = 0.8

[canary]
waves = [25, 50, 100]

[signing]
approval = "operator"
"""


@dataclass(frozen=True)
class Fleet:
    server: Any
    tokens: dict[Role, str]

    def run(self, *args: str, role: Role = Role.admin) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "FEDFLEET_TOKEN": self.tokens[role]}
        env.pop("FEDFLEET_URL", None)
        return subprocess.run(
            [FEDFLEET, "policy", *args, "--fleet-url", self.server.base_url],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """``fleet serve`` with a signing-key folder (FEDFLEET_FLEET_SIGNING_KEY_DIR)."""
    from fleet_server import fleet_fixtures

    work = tmp_path_factory.mktemp("policy-fleet")
    keys = work / "signing-keys"
    keys.mkdir(mode=0o700)
    env = {"FEDFLEET_FLEET_SIGNING_KEY_DIR": str(keys)}
    with fleet_fixtures().running_server(work / "fleet-data", env=env) as server:
        yield server


def key_dir(fleet: Fleet) -> Path:
    return Path(fleet.server.data_dir).parent / "signing-keys"


@pytest.fixture(scope="module")
def fleet(keyed_server: Any) -> Iterator[Fleet]:
    from fleet.crud import tokens

    module_fleet_server = keyed_server
    engine = make_engine(module_fleet_server.database_url)
    enroll_devices(engine, count=2, group="wards", target="cpu-x86")
    found: dict[Role, str] = {}
    with session_scope(engine, write=True) as session:
        for role in Role:
            found[role], _ = tokens.create_token(
                session, name=role.value, role=role, actor=Actor("test", "admin", "cli")
            )
    engine.dispose()
    yield Fleet(module_fleet_server, found)


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def test_apply_show_apply_again_is_version_2(fleet: Fleet, tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "wards.toml"
    path.write_text(POLICY)
    # Execute
    first = fleet.run("apply", str(path))
    shown = fleet.run("show", "wards", role=Role.viewer)
    path.write_text(POLICY.replace("0.8", "0.85"))
    second = fleet.run("apply", str(path))
    listed = fleet.run("list", role=Role.viewer)
    old = fleet.run("show", "wards", "--version", "1", role=Role.viewer)
    # Assert
    assert first.returncode == 0, first.stderr
    assert "policy of group 'wards' is now version 1 (signing: approval" in first.stdout
    assert shown.returncode == 0 and "version 1 (current)" in shown.stdout
    assert POLICY.strip() in shown.stdout
    assert second.returncode == 0 and "is now version 2" in second.stdout, second.stderr
    assert listed.stdout.startswith("wards\tversion 2\tsigning approval\t"), listed.stdout
    assert "version 1 (superseded)" in old.stdout and "min_accuracy = 0.8\n" in old.stdout
    missing = fleet.run("show", "wards", "--version", "7", role=Role.viewer)
    assert missing.returncode == 2 and "no policy version 7" in _one_error_line(missing.stderr)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (('group = "wards"', 'group = "nowhere"'), "group 'nowhere' does not exist"),
        (('["cpu-x86"]', '["pdp-11"]'), "unknown target 'pdp-11'"),
        (('["cpu-x86"]', '["rpi5"]'), "target 'rpi5' is not present in group 'wards'"),
        (("min_accuracy = 0.8", "min_accuracy = 1.2"), "min_accuracy = 1.2 is out of range"),
        (("[25, 50, 100]", "[25, 50, 90]"), "must increase and end at 100"),
        (("[gates]", "[gates]\nmax_epsilon = -1.0"), "max_epsilon = -1.0 is out of range"),
        (
            ('approval = "operator"', 'key = "/no/such/ward.key"'),
            "outside the fleet's signing-key folder",
        ),
        (("[gates]", "[gatez]"), "unknown key 'gatez'"),
    ],
)
def test_bad_policies_are_refused_with_one_line_and_exit_2(
    fleet: Fleet, tmp_path: Path, change: tuple[str, str], words: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(POLICY.replace(*change))
    before = fleet.run("list", role=Role.viewer).stdout
    result = fleet.run("apply", str(path))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert words in _one_error_line(result.stderr)
    assert fleet.run("list", role=Role.viewer).stdout == before  # nothing stored


def test_a_key_the_fleet_cannot_read_is_refused_by_the_fleet(fleet: Fleet, tmp_path: Path) -> None:
    # The file parses here; only the fleet knows it cannot use the key (mode 0644).
    pair = generate_keypair(prefix=key_dir(fleet) / "wards", force=True)
    os.chmod(pair.private, 0o644)
    path = tmp_path / "keyed.toml"
    path.write_text(POLICY.replace('approval = "operator"', f'key = "{pair.private}"'))
    result = fleet.run("apply", str(path))
    assert result.returncode == 2
    line = _one_error_line(result.stderr)
    assert line.startswith("error: the fleet refused the policy: ") and "chmod 600" in line


def test_an_operator_token_may_not_apply(fleet: Fleet, tmp_path: Path) -> None:
    path = tmp_path / "wards.toml"
    path.write_text(POLICY)
    result = fleet.run("apply", str(path), role=Role.operator)
    assert result.returncode == 1 and "needs an admin token" in _one_error_line(result.stderr)


def test_approve_of_an_unknown_promotion_is_one_line(fleet: Fleet) -> None:
    result = fleet.run("approve", "999")
    assert result.returncode == 2 and "promotion 999 does not exist" in _one_error_line(
        result.stderr
    )


def test_approve_with_an_unreadable_offline_key_is_one_line_before_any_call(
    fleet: Fleet, tmp_path: Path
) -> None:
    result = fleet.run("approve", "1", "--key", str(tmp_path / "missing.key"))
    assert result.returncode == 2
    assert "--key" in _one_error_line(result.stderr)


def test_timeline_of_a_group_and_of_an_unknown_group(fleet: Fleet) -> None:
    shown = fleet.run("timeline", "wards", role=Role.viewer)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == "nothing on the timeline of group 'wards' yet" or (
        "system:" in shown.stdout or "token:" in shown.stdout
    )
    missing = fleet.run("timeline", "nowhere", role=Role.viewer)
    assert missing.returncode == 2
    assert "group 'nowhere' does not exist" in _one_error_line(missing.stderr)


@pytest.mark.e2e
def test_the_offline_key_path_builds_signs_uploads_and_approves_then_the_fleet_rolls_out(
    fleet: Fleet, tmp_path: Path
) -> None:
    """Approval with a key the fleet never sees: the real `fleet serve` (its promotion
    controller stepping) waits, `policy approve ID --key` builds the cpu-x86 bundle here,
    signs, uploads and approves; the fleet then creates the rollout on its own."""
    import hashlib
    import time

    import torch

    from fleet.client import FleetClient, FleetConnection
    from tasks import get_task

    # Prepare: an approval policy for digits-cnn, then a version registered from a run.
    path = tmp_path / "offline.toml"
    path.write_text(
        POLICY.replace('group = "wards"', 'group = "wards"\ntask = "digits-cnn"').replace(
            "min_accuracy = 0.8", "min_accuracy = 0.8\nmax_bundle_accuracy_drop_points = 100.0"
        )
    )
    assert fleet.run("apply", str(path)).returncode == 0
    torch.manual_seed(0)
    checkpoint = tmp_path / "model.pt"
    torch.save(get_task("digits-cnn").build_model().state_dict(), checkpoint)
    connection = FleetConnection(url=fleet.server.base_url, token=fleet.tokens[Role.admin])
    with FleetClient(connection) as client:
        run = client.create_run(task="digits-cnn")
        model = client.register_model(
            task="digits-cnn", source_run_id=run.id, metrics={"final_accuracy": 0.9}
        )
        sha = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
        client.upload_artifact(model.id, checkpoint, format="torch", target="any", sha256=sha)

        def promotion() -> Any:
            return next((p for p in client_promotions(client) if p["model"] == model.id), None)

        deadline = time.monotonic() + 30
        while (found := promotion()) is None or found["state"] != "pending_approval":
            assert time.monotonic() < deadline, found
            time.sleep(0.2)
        offline = generate_keypair(prefix=tmp_path / "offline")
        # Execute
        result = fleet.run("approve", str(found["id"]), "--key", str(offline.private))
        # Assert
        assert result.returncode == 0, result.stderr
        assert "cpu-x86: built, signed with" in result.stdout
        assert "approved by" in result.stdout
        deadline = time.monotonic() + 30
        while (found := promotion()) is not None and found["state"] == "approved":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert found is not None and found["state"] == "rolling_out", found
        bundles = [a for a in client.get_model(model.id).artifacts if a.format == "bundle"]
        assert [b.target for b in bundles] == ["cpu-x86"] and bundles[0].signature
    timeline = fleet.run("timeline", "wards", "--model", str(model.id), role=Role.viewer)
    assert "pending_approval -- waiting for an operator to sign offline" in timeline.stdout
    assert "promotion.approve" not in timeline.stdout  # summaries, not action names
    assert "rolling_out -- rollout" in timeline.stdout


def client_promotions(client: Any) -> list[dict[str, Any]]:
    """Every promotion as {id, model, state} (the API's list, on the client's session)."""
    answer = client._client.get("/promotions")
    answer.raise_for_status()
    return [
        {"id": p["id"], "model": p["model_version_id"], "state": p["state"]} for p in answer.json()
    ]
