"""The model registry: lineage, stages, artifact upload/download, limits, signatures."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from fleet.settings import FleetSettings

Headers = dict[str, str]


def register(client: TestClient, headers: Headers, **body: Any) -> dict[str, Any]:
    response = client.post("/api/v1/models", json={"task": "digits-cnn", **body}, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


def upload(
    client: TestClient,
    headers: Headers,
    model_id: int,
    content: bytes,
    **fields: str,
) -> Any:
    data = {"format": "onnx", "target": "cpu-x86", **fields}
    return client.post(
        f"/api/v1/models/{model_id}/artifacts",
        files={"file": ("model.onnx", content, "application/octet-stream")},
        data=data,
        headers=headers,
    )


def stored_files(settings: FleetSettings) -> list[Path]:
    root = settings.artifact_dir
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_register_with_lineage_and_metrics(client: TestClient, admin: Headers) -> None:
    run = client.post("/api/v1/runs", json={"task": "digits-cnn"}, headers=admin).json()
    parent = register(client, admin, name="base")
    child = register(
        client,
        admin,
        name="fine-tuned",
        source_run_id=run["id"],
        source_round=12,
        parent_id=parent["id"],
        metrics={"accuracy": 0.93, "loss": 0.21},
    )
    fetched = client.get(f"/api/v1/models/{child['id']}", headers=admin).json()
    assert fetched["source_run_id"] == run["id"] and fetched["source_round"] == 12
    assert fetched["parent_id"] == parent["id"]
    assert fetched["metrics"] == {"accuracy": 0.93, "loss": 0.21}
    assert fetched["stage"] == "registered" and fetched["created_by"].startswith("token:admin#")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"source_run_id": 999}, "run 999 does not exist"),
        ({"parent_id": 999}, "model version 999 does not exist"),
        ({"source_round": 3}, "without source_run_id"),
        ({"metrics": {"accuracy": "high"}}, "metrics.accuracy"),
        ({"metrics": {"bad name": 1.0}}, "not a valid metric name"),
        ({"task": "Digits CNN"}, "not a valid name"),
        ({"source_run_id": 2**40}, "less than or equal"),
    ],
)
def test_bad_registrations_are_refused(
    client: TestClient, admin: Headers, body: dict[str, Any], fragment: str
) -> None:
    response = client.post("/api/v1/models", json={"task": "digits-cnn", **body}, headers=admin)
    assert response.status_code == 422
    assert fragment in response.text
    assert client.get("/api/v1/models", headers=admin).json()["total"] == 0


def test_nan_metrics_are_refused(client: TestClient, admin: Headers) -> None:
    # Python's JSON parser accepts the NaN literal; the API must not store it.
    response = client.post(
        "/api/v1/models",
        content=b'{"task": "digits-cnn", "metrics": {"accuracy": NaN}}',
        headers={**admin, "Content-Type": "application/json"},
    )
    assert response.status_code == 422 and "finite" in response.text


def test_promote_keeps_one_promoted_version_per_task(client: TestClient, admin: Headers) -> None:
    first = register(client, admin)["id"]
    second = register(client, admin)["id"]
    other_task = register(client, admin, task="breast-cancer-mlp")["id"]
    for model_id in (first, other_task, second):
        response = client.post(f"/api/v1/models/{model_id}/promote", headers=admin)
        assert response.status_code == 200 and response.json()["stage"] == "promoted"
    stages = {
        m["id"]: m["stage"] for m in client.get("/api/v1/models", headers=admin).json()["items"]
    }
    assert stages == {first: "registered", second: "promoted", other_task: "promoted"}
    actions = [
        e["action"]
        for e in client.get("/api/v1/audit?action=model.", headers=admin).json()["items"]
    ]
    assert actions.count("model.demote") == 1 and actions.count("model.promote") == 3
    listed = client.get("/api/v1/models?task=digits-cnn&stage=promoted", headers=admin).json()
    assert [m["id"] for m in listed["items"]] == [second]


def test_deprecate_is_idempotent_and_blocks_new_artifacts(
    client: TestClient, admin: Headers
) -> None:
    model = register(client, admin)["id"]
    assert (
        client.post(f"/api/v1/models/{model}/deprecate", headers=admin).json()["stage"]
        == "deprecated"
    )
    again = client.post(f"/api/v1/models/{model}/deprecate", headers=admin)
    assert again.status_code == 200
    assert client.get("/api/v1/audit?action=model.deprecate", headers=admin).json()["total"] == 1
    response = upload(client, admin, model, b"bytes")
    assert response.status_code == 409 and "deprecated" in response.json()["detail"]


def test_artifact_round_trip_is_byte_identical(
    client: TestClient, admin: Headers, settings: FleetSettings
) -> None:
    model = register(client, admin)["id"]
    content = bytes(range(256)) * 4000  # ~1 MB
    digest = hashlib.sha256(content).hexdigest()
    response = upload(client, admin, model, content, sha256=digest)
    assert response.status_code == 201, response.text
    artifact = response.json()
    assert (artifact["size_bytes"], artifact["sha256"]) == (len(content), digest)
    download = client.get(f"/api/v1/artifacts/{artifact['id']}/download", headers=admin)
    assert download.status_code == 200
    assert download.content == content
    assert download.headers["etag"] == f'"{digest}"'
    assert stored_files(settings) == [settings.artifact_dir / digest[:2] / digest]
    listed = client.get(f"/api/v1/models/{model}/artifacts", headers=admin).json()
    assert [a["id"] for a in listed] == [artifact["id"]]


def test_wrong_sha256_is_refused_and_leaves_no_file(
    client: TestClient, admin: Headers, settings: FleetSettings
) -> None:
    model = register(client, admin)["id"]
    response = upload(client, admin, model, b"payload", sha256="0" * 64)
    assert response.status_code == 422 and "not the expected" in response.json()["detail"]
    assert stored_files(settings) == []
    assert client.get(f"/api/v1/models/{model}/artifacts", headers=admin).json() == []


def test_duplicate_artifact_is_a_conflict_and_keeps_the_first_file(
    client: TestClient, admin: Headers, settings: FleetSettings
) -> None:
    model = register(client, admin)["id"]
    assert upload(client, admin, model, b"first").status_code == 201
    second = upload(client, admin, model, b"second")
    assert second.status_code == 409 and "already has" in second.json()["detail"]
    digest = hashlib.sha256(b"first").hexdigest()
    assert stored_files(settings) == [settings.artifact_dir / digest[:2] / digest]


def test_empty_and_unknown_uploads_are_refused(client: TestClient, admin: Headers) -> None:
    model = register(client, admin)["id"]
    empty = upload(client, admin, model, b"")
    assert empty.status_code == 422 and "empty" in empty.json()["detail"]
    missing = upload(client, admin, 4242, b"x")
    assert missing.status_code == 404
    bad_format = upload(client, admin, model, b"x", format="exe")
    assert bad_format.status_code == 422 and "format" in bad_format.text
    no_file = client.post(
        f"/api/v1/models/{model}/artifacts", data={"format": "onnx", "target": "x"}, headers=admin
    )
    assert no_file.status_code == 422 and "body.file" in no_file.text


def test_upload_larger_than_the_limit_is_refused_with_413(
    database: Any,
    settings_factory: Callable[..., FleetSettings],
    app_factory: Callable[[FleetSettings], TestClient],
    new_token: Callable[..., str],
) -> None:
    from fleet.models.auth import Role

    settings = settings_factory(max_upload_bytes=64 * 1024)
    client = app_factory(settings)
    admin = {"Authorization": f"Bearer {new_token(client.app.state.engine, Role.admin)}"}  # type: ignore[attr-defined]
    model = register(client, admin)["id"]
    # Declared length over the limit: refused before the body is read.
    declared = upload(client, admin, model, b"x" * (100 * 1024))
    assert declared.status_code == 413 and "limit" in declared.json()["detail"]

    # No declared length (chunked): cut off while streaming.
    def chunks() -> Any:
        boundary = b"--b0undary"
        yield boundary + b'\r\nContent-Disposition: form-data; name="format"\r\n\r\nonnx\r\n'
        yield boundary + b'\r\nContent-Disposition: form-data; name="target"\r\n\r\nany\r\n'
        yield boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="m"\r\n\r\n'
        for _ in range(200):
            yield b"y" * 1024
        yield b"\r\n" + boundary + b"--\r\n"

    streamed = client.post(
        f"/api/v1/models/{model}/artifacts",
        content=chunks(),
        headers={**admin, "Content-Type": "multipart/form-data; boundary=b0undary"},
    )
    assert streamed.status_code == 413
    assert stored_files(settings) == []
    small = upload(client, admin, model, b"z" * 1024)
    assert small.status_code == 201


def test_signed_fleet_requires_valid_signatures(
    database: Any,
    tmp_path: Path,
    settings_factory: Callable[..., FleetSettings],
    app_factory: Callable[[FleetSettings], TestClient],
    new_token: Callable[..., str],
) -> None:
    from fleet.models.auth import Role

    key = Ed25519PrivateKey.generate()
    public = tmp_path / "signing.pub.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    client = app_factory(settings_factory(signing_public_key=public))
    admin = {"Authorization": f"Bearer {new_token(client.app.state.engine, Role.admin)}"}  # type: ignore[attr-defined]
    model = register(client, admin)["id"]
    content = b"signed model bytes"
    digest = hashlib.sha256(content).digest()
    good = base64.b64encode(key.sign(digest)).decode()
    forged = base64.b64encode(Ed25519PrivateKey.generate().sign(digest)).decode()

    unsigned = upload(client, admin, model, content)
    assert unsigned.status_code == 422 and "requires signed artifacts" in unsigned.json()["detail"]
    bad = upload(client, admin, model, content, signature=forged)
    assert bad.status_code == 422 and "does not verify" in bad.json()["detail"]
    malformed = upload(client, admin, model, content, signature="abc")
    assert malformed.status_code == 422 and "signature" in malformed.text
    ok = upload(client, admin, model, content, signature=good)
    assert ok.status_code == 201 and ok.json()["signature"] == good


def test_viewer_can_download_but_not_upload(
    client: TestClient, headers: dict[Any, Headers], admin: Headers
) -> None:
    from fleet.models.auth import Role

    model = register(client, admin)["id"]
    artifact = upload(client, admin, model, b"abc").json()
    viewer = headers[Role.viewer]
    assert upload(client, viewer, model, b"def").status_code == 403
    download = client.get(f"/api/v1/artifacts/{artifact['id']}/download", headers=viewer)
    assert download.status_code == 200 and download.content == b"abc"


def test_a_bundle_must_be_the_model_version_it_is_uploaded_for(
    client: TestClient, admin: Headers, settings: FleetSettings
) -> None:
    # Prepare: v1 with its own bundle; v2 of the same task; a version of another task; a
    # version holding a checkpoint.
    from firmware_images.demo import build_demo_bundle

    key = Ed25519PrivateKey.generate()
    v1 = register(client, admin, task="synthetic-logreg")["id"]
    v2 = register(client, admin, task="synthetic-logreg")["id"]
    other_task = register(client, admin, task="digits-cnn")["id"]
    with_checkpoint = register(client, admin, task="synthetic-logreg")["id"]
    assert (
        upload(client, admin, with_checkpoint, b"weights", format="torch", target="any").status_code
        == 201
    )
    old = build_demo_bundle(private_key=key, version="v1", model_version=str(v1)).data
    assert upload(client, admin, v1, old, format="bundle").status_code == 201
    files_before = stored_files(settings)

    def refused(model: int, data: bytes, **fields: str) -> str:
        response = upload(client, admin, model, data, **{"format": "bundle", **fields})
        assert response.status_code == 422, response.text
        return str(response.json()["detail"])

    # Execute / Assert: v1's bundle replayed as v2's artifact is refused, and the rest.
    assert f"built from model version {v1}, not {v2}" in refused(v2, old)
    assert "is a 'digits-cnn' model" in refused(other_task, old)
    for_rpi5 = build_demo_bundle(private_key=key, version="v2", target="rpi5").data
    assert "built for target 'rpi5', not 'cpu-x86'" in refused(v2, for_rpi5)
    unbound = build_demo_bundle(private_key=key, version="x", seed=3).data
    assert f"not model version {with_checkpoint}'s checkpoint" in refused(with_checkpoint, unbound)
    assert "not a valid fedfleet bundle" in refused(v2, b"PK\x03\x04 not really a zip")
    # Nothing refused was kept; v2's own bundle is accepted.
    assert stored_files(settings) == files_before
    own = build_demo_bundle(private_key=key, version="v2", model_version=str(v2), seed=1).data
    assert upload(client, admin, v2, own, format="bundle").status_code == 201


def test_the_registry_refuses_a_bundle_whose_release_is_not_newer(
    client: TestClient, admin: Headers, settings: FleetSettings
) -> None:
    # Prepare: release 200 stored for synthetic-logreg on cpu-x86.
    from firmware_images.demo import build_demo_bundle

    key = Ed25519PrivateKey.generate()
    first, second, third, other_task = (
        register(client, admin, task=task)["id"]
        for task in ("synthetic-logreg",) * 3 + ("digits-cnn",)
    )

    def bundle(model: int, release: int | None, *, task: str = "synthetic-logreg") -> bytes:
        return build_demo_bundle(
            private_key=key,
            version=f"v{model}",
            model_version=str(model),
            release=release,
            task=task,
        ).data

    assert upload(client, admin, first, bundle(first, 200), format="bundle").status_code == 201
    files_before = stored_files(settings)

    # Execute / Assert: an older or equal release is one 422 naming both releases.
    for release in (100, 200):
        response = upload(client, admin, second, bundle(second, release), format="bundle")
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert (
            f"bundle release {release} for task 'synthetic-logreg' on target 'cpu-x86' is "
            f"not above release 200, stored for model version {first}"
        ) in detail
    assert stored_files(settings) == files_before  # nothing refused was kept
    # Another task on the same target has its own releases (its devices, its floor).
    assert (
        upload(
            client, admin, other_task, bundle(other_task, 5, task="digits-cnn"), format="bundle"
        ).status_code
        == 201
    )
    # A newer release is stored; from then on it is the one to beat.
    assert upload(client, admin, second, bundle(second, 201), format="bundle").status_code == 201
    response = upload(client, admin, third, bundle(third, 201), format="bundle")
    assert response.status_code == 422 and "not above release 201" in response.json()["detail"]
