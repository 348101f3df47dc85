"""The model loop through the real fleet API: simulate → model register → image build
--model --upload → rollout create, and every way the registry side can fail.

One real ``fleet serve`` (uvicorn, SQLite in tmp) for the module, started and stopped by
PID with the fleet tests' own helper; the commands run as real subprocesses (the loop)
or through Typer's runner (the error cases, which stop before any torch work).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))

from fleet_server import create_token, fleet_fixtures

from coordinator.model_cli import model_app
from firmware_images.bundle import inspect_bundle
from firmware_images.cli import image_app
from firmware_images.keys import generate_keypair, load_public_key

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROUNDS = 8
TARGET = "cpu-x86"
runner = CliRunner()


def _fedfleet(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "fedfleet"
    return subprocess.run(
        [str(exe), *args],
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("registry-loop")


@pytest.fixture(scope="module")
def server(work: Path) -> Iterator[Any]:
    with fleet_fixtures().running_server(work / "fleet-data") as running:
        yield running


@pytest.fixture(scope="module")
def tokens(server: Any, work: Path) -> dict[str, str]:
    return {role: create_token(server, role, cwd=work) for role in ("operator", "viewer")}


@pytest.fixture(scope="module")
def fleet_env(server: Any, tokens: dict[str, str]) -> dict[str, str]:
    return {"FEDFLEET_URL": server.base_url, "FEDFLEET_TOKEN": tokens["operator"]}


@pytest.fixture(scope="module")
def api(server: Any, tokens: dict[str, str]) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=f"{server.base_url}/api/v1",
        headers={"Authorization": f"Bearer {tokens['operator']}"},
        timeout=30,
    ) as client:
        yield client


@pytest.fixture(scope="module")
def run_dir(work: Path) -> Path:
    """A real `fedfleet simulate` run folder (4 clients, 8 rounds: about 5 s)."""
    out = work / "runs" / "sim-1"
    done = _fedfleet(
        "simulate",
        "--rounds",
        str(ROUNDS),
        "--clients",
        "4",
        "--clients-per-round",
        "4",
        "--local-epochs",
        "2",
        "--out",
        str(out),
        env={},
        cwd=work,
    )
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def keys(work: Path) -> Any:
    return generate_keypair(prefix=work / "ops")


@pytest.fixture(scope="module")
def registered(run_dir: Path, fleet_env: dict[str, str], work: Path) -> int:
    done = _fedfleet("model", "register", str(run_dir), env=fleet_env, cwd=work)
    assert done.returncode == 0, done.stderr
    assert "registered model version" in done.stderr
    return int(done.stdout.strip())


def test_register_records_the_run_and_the_checkpoint_with_lineage(
    registered: int, run_dir: Path, api: httpx.Client
) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    model = api.get(f"/models/{registered}").json()

    assert model["task"] == "digits-cnn"
    assert model["source_round"] == ROUNDS
    assert model["metrics"]["final_accuracy"] == pytest.approx(metrics["final_accuracy"])
    assert model["metrics"]["rounds"] == ROUNDS
    (checkpoint,) = [a for a in model["artifacts"] if a["format"] == "torch"]
    assert checkpoint["target"] == "any"
    assert checkpoint["sha256"] == hashlib.sha256((run_dir / "model.pt").read_bytes()).hexdigest()
    run = api.get(f"/runs/{model['source_run_id']}").json()
    assert run["name"] == "sim-1" and run["status"] == "completed"
    assert run["final_model_version_id"] == registered
    assert [r["round"] for r in run["rounds"]] == list(range(1, ROUNDS + 1))
    assert run["rounds"][-1]["accuracy"] == pytest.approx(metrics["rounds"][-1]["accuracy"])


@pytest.fixture(scope="module")
def built(registered: int, fleet_env: dict[str, str], keys: Any, work: Path) -> Path:
    """`fedfleet image build --model V --upload` (the real command): the bundle written."""
    out = work / f"digits-{TARGET}.ffb"
    done = _fedfleet(
        "image", "build", "--target", TARGET, "--model", str(registered),
        "--key", str(keys.private), "--out", str(out), "--upload",
        env=fleet_env, cwd=work,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "PASS" in done.stdout and f"of model version {registered}" in done.stdout
    return out


def test_build_from_the_registry_uploads_a_bundle_a_rollout_deploys(
    registered: int,
    built: Path,
    fleet_env: dict[str, str],
    keys: Any,
    api: httpx.Client,
    server: Any,
    work: Path,
) -> None:
    out = built
    # The artifact is the file written, with the build key's signature of its digest.
    data = out.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    (bundle,) = [
        a for a in api.get(f"/models/{registered}/artifacts").json() if a["format"] == "bundle"
    ]
    assert bundle["target"] == TARGET and bundle["sha256"] == sha
    public_key = load_public_key(keys.public)
    assert isinstance(public_key, Ed25519PublicKey)
    public_key.verify(base64.b64decode(bundle["signature"]), bytes.fromhex(sha))  # raises if bad
    manifest = inspect_bundle(data)
    checkpoint = next(
        a for a in api.get(f"/models/{registered}").json()["artifacts"] if a["format"] == "torch"
    )
    assert manifest.source.model_version == str(registered)
    assert manifest.source.checkpoint_sha256 == checkpoint["sha256"]

    # What a device would download verifies with the trusted key.
    downloaded = work / "downloaded.ffb"
    downloaded.write_bytes(api.get(f"/artifacts/{bundle['id']}/download").content)
    verified = runner.invoke(
        image_app, ["verify", str(downloaded), "--pubkey", str(keys.public), "--target", TARGET]
    )
    assert verified.exit_code == 0, verified.stderr
    assert verified.stdout.startswith(f"OK {downloaded}")

    # `fedfleet rollout create --model V` finds that bundle for the group's devices.
    assert api.post("/groups", json={"name": "wards"}).status_code == 201
    enrolled = api.post(
        "/devices", json={"name": "pi-1", "hardware_target": TARGET, "group": "wards"}
    )
    assert enrolled.status_code == 201
    rollout = _fedfleet(
        "rollout", "create", "--model", str(registered), "--group", "wards", "--waves", "100",
        env=fleet_env, cwd=work,
    )  # fmt: skip
    assert rollout.returncode == 0, rollout.stderr
    with sqlite3.connect(server.data_dir / "fleet.db") as db:
        picked = db.execute("SELECT artifact_id FROM rollout_devices").fetchall()
    assert picked == [(bundle["id"],)]

    # A second build for the same version and target is refused before building anything.
    again = _fedfleet(
        "image", "build", "--target", TARGET, "--model", str(registered),
        "--key", str(keys.private), "--out", str(work / "again.ffb"), "--upload",
        env=fleet_env, cwd=work,
    )  # fmt: skip
    assert again.returncode == 1
    assert "already has a bundle for cpu-x86" in _one_line(again.stderr)
    assert not (work / "again.ffb").exists()


# --- image build --model: each failure is one line, exit 1 or 2, and leaves no file -----


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _build(tmp_path: Path, keys: Any, env: dict[str, str], model: str, *extra: str) -> Any:
    args = ["build", "--target", TARGET, "--model", model, "--key", str(keys.private),
            "--out", str(tmp_path / "b.ffb"), *extra]  # fmt: skip
    return runner.invoke(image_app, args, env=env)


def _version_with_checkpoint(api: httpx.Client, content: bytes) -> tuple[int, str]:
    """A new version whose 'torch' artifact holds ``content``; (version, sha256)."""
    version = api.post("/models", json={"task": "digits-cnn", "name": "corrupt"}).json()["id"]
    sha = hashlib.sha256(content).hexdigest()
    stored = api.post(
        f"/models/{version}/artifacts",
        data={"format": "torch", "target": "any", "sha256": sha},
        files={"file": ("model.pt", content, "application/octet-stream")},
    )
    assert stored.status_code == 201, stored.text
    return int(version), sha


def test_unknown_version_and_version_without_checkpoint(
    tmp_path: Path, keys: Any, fleet_env: dict[str, str], api: httpx.Client
) -> None:
    unknown = _build(tmp_path, keys, fleet_env, "9999")
    assert unknown.exit_code == 1
    assert "model version 9999 is not in the registry" in _one_line(unknown.stderr)

    bare = api.post("/models", json={"task": "digits-cnn"}).json()["id"]
    empty = _build(tmp_path, keys, fleet_env, str(bare))
    assert empty.exit_code == 1
    assert f"model version {bare} has no torch checkpoint artifact" in _one_line(empty.stderr)

    wrong_task = _build(tmp_path, keys, fleet_env, str(bare), "--task", "breast-cancer-mlp")
    assert wrong_task.exit_code == 1
    assert "trained for task 'digits-cnn', not 'breast-cancer-mlp'" in _one_line(wrong_task.stderr)

    not_a_number = _build(tmp_path, keys, fleet_env, "v7")
    assert not_a_number.exit_code == 2
    assert "is not a model version number" in _one_line(not_a_number.stderr)
    assert list(tmp_path.iterdir()) == []


def test_wrong_token_missing_token_and_unreachable_fleet(
    tmp_path: Path, keys: Any, fleet_env: dict[str, str], registered: int
) -> None:
    bogus = "ff_" + "x" * 40
    refused = _build(tmp_path, keys, {**fleet_env, "FEDFLEET_TOKEN": bogus}, str(registered))
    assert refused.exit_code == 1
    line = _one_line(refused.stderr)
    assert "refused the token in $FEDFLEET_TOKEN (HTTP 401" in line
    assert bogus not in refused.stderr + refused.stdout  # the secret is never echoed

    missing = _build(tmp_path, keys, {**fleet_env, "FEDFLEET_TOKEN": ""}, str(registered))
    assert missing.exit_code == 2
    assert "$FEDFLEET_TOKEN is not set" in _one_line(missing.stderr)

    nowhere = f"http://127.0.0.1:{_free_port()}"
    unreachable = _build(tmp_path, keys, fleet_env, str(registered), "--fleet-url", nowhere)
    assert unreachable.exit_code == 1
    assert f"cannot reach the fleet at {nowhere}" in _one_line(unreachable.stderr)

    bad_url = _build(tmp_path, keys, fleet_env, str(registered), "--fleet-url", "ftp://x")
    assert bad_url.exit_code == 2
    assert "is not an http(s) address" in _one_line(bad_url.stderr)
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_that_does_not_match_its_hash_is_refused(
    tmp_path: Path, keys: Any, fleet_env: dict[str, str], api: httpx.Client, server: Any
) -> None:
    version, sha = _version_with_checkpoint(api, b"a checkpoint only this test uses " * 64)
    stored = server.data_dir / "artifacts" / sha[:2] / sha
    stored.write_bytes(b"bit rot in the fleet's storage " * 64)  # same name, other bytes

    result = _build(tmp_path, keys, fleet_env, str(version))
    assert result.exit_code == 1
    line = _one_line(result.stderr)
    assert re.search(rf"has SHA-256 [0-9a-f]{{64}}, but the registry records {sha}", line)
    assert list(tmp_path.iterdir()) == []


# --- image publish and model register ------------------------------------------------


def test_publish_refuses_foreign_bundles_and_viewer_tokens(
    tmp_path: Path,
    keys: Any,
    fleet_env: dict[str, str],
    tokens: dict[str, str],
    registered: int,
    built: Path,
    api: httpx.Client,
) -> None:
    bundle = built  # signed by `keys`, built from version `registered`
    other_key = generate_keypair(prefix=tmp_path / "other")
    other = api.post("/models", json={"task": "digits-cnn"}).json()["id"]

    def publish(model: int, key: Path, env: dict[str, str]) -> Any:
        args = ["publish", str(bundle), "--model", str(model), "--key", str(key)]
        return runner.invoke(image_app, args, env=env)

    foreign = publish(other, other_key.private, fleet_env)
    assert foreign.exit_code == 1
    assert "does not verify with the public half of --key" in _one_line(foreign.stderr)
    assert "was signed by key" in foreign.stderr
    elsewhere = publish(other, keys.private, fleet_env)
    assert elsewhere.exit_code == 1
    assert f"was built from model version {registered}, not {other}" in _one_line(elsewhere.stderr)
    viewer = publish(registered, keys.private, {**fleet_env, "FEDFLEET_TOKEN": tokens["viewer"]})
    assert viewer.exit_code == 1
    assert "needs an operator or admin token" in _one_line(viewer.stderr)
    assert api.get(f"/models/{other}/artifacts").json() == []


def test_register_refuses_bad_run_folders_before_writing_to_the_fleet(
    tmp_path: Path,
    run_dir: Path,
    fleet_env: dict[str, str],
    tokens: dict[str, str],
    api: httpx.Client,
) -> None:
    runs_before = api.get("/runs").json()["total"]
    models_before = api.get("/models").json()["total"]

    missing = runner.invoke(model_app, ["register", str(tmp_path / "nope")], env=fleet_env)
    assert missing.exit_code == 2
    assert "does not exist" in _one_line(missing.stderr)

    no_model = tmp_path / "no-model"
    no_model.mkdir()
    (no_model / "metrics.json").write_text((run_dir / "metrics.json").read_text())
    result = runner.invoke(model_app, ["register", str(no_model)], env=fleet_env)
    assert result.exit_code == 2
    assert "has no model.pt" in _one_line(result.stderr)

    wrong_task = tmp_path / "wrong-task"
    wrong_task.mkdir()
    doc = json.loads((run_dir / "metrics.json").read_text())
    doc["config"]["task"] = "breast-cancer-mlp"
    (wrong_task / "metrics.json").write_text(json.dumps(doc))
    (wrong_task / "model.pt").write_bytes((run_dir / "model.pt").read_bytes())
    result = runner.invoke(model_app, ["register", str(wrong_task)], env=fleet_env)
    assert result.exit_code == 2
    assert "breast-cancer-mlp" in _one_line(result.stderr)

    viewer = runner.invoke(
        model_app, ["register", str(run_dir)], env={**fleet_env, "FEDFLEET_TOKEN": tokens["viewer"]}
    )
    assert viewer.exit_code == 1
    assert "needs an operator or admin token" in _one_line(viewer.stderr)

    assert api.get("/runs").json()["total"] == runs_before
    assert api.get("/models").json()["total"] == models_before


def test_a_fleet_that_requires_signatures_gets_them_and_a_failed_upload_is_undone(
    tmp_path: Path, run_dir: Path, keys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDFLEET_FLEET_SIGNING_PUBLIC_KEY", str(keys.public))
    with fleet_fixtures().running_server(tmp_path / "signing-fleet") as signing:
        env = {
            "FEDFLEET_URL": signing.base_url,
            "FEDFLEET_TOKEN": create_token(signing, "operator", cwd=tmp_path),
        }
        unsigned = runner.invoke(model_app, ["register", str(run_dir)], env=env)
        signed = runner.invoke(
            model_app, ["register", str(run_dir), "--key", str(keys.private)], env=env
        )
        headers = {"Authorization": f"Bearer {env['FEDFLEET_TOKEN']}"}
        base = f"{signing.base_url}/api/v1"
        models = httpx.get(f"{base}/models", headers=headers, timeout=10).json()["items"]
        runs = httpx.get(f"{base}/runs", headers=headers, timeout=10).json()["items"]

    # Without --key the fleet refuses the checkpoint; what was already written is undone.
    assert unsigned.exit_code == 1
    line = _one_line(unsigned.stderr)
    assert "requires signed artifacts" in line
    assert "model version 1 deprecated" in line and "marked failed" in line
    # With --key the checkpoint carries the key's signature of its digest.
    assert signed.exit_code == 0, signed.stderr
    assert signed.stdout.strip() == "2"
    stages = {m["id"]: m["stage"] for m in models}
    assert stages == {1: "deprecated", 2: "registered"}
    assert {r["final_model_version_id"]: r["status"] for r in runs} == {
        None: "failed",
        2: "completed",
    }
    (artifact,) = next(m for m in models if m["id"] == 2)["artifacts"]
    load_public_key(keys.public).verify(
        base64.b64decode(artifact["signature"]), bytes.fromhex(artifact["sha256"])
    )
