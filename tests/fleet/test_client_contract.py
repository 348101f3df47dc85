"""fleet.client against the fleet app's OpenAPI: every call it makes exists, as it makes it.

The calls come from the client's own table (``fleet.client.routes.ROUTES``), never from
strings repeated here: renaming a route, a path parameter, a body field or a response
field the client reads fails :func:`test_every_route_of_the_client_is_in_the_openapi`.
:func:`test_the_client_calls_only_its_declared_routes` checks the table is what the
client really sends (an ``httpx`` mock transport records each request).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleet.client import API_PREFIX, FleetClient, FleetConnection
from fleet.client.routes import GET_RUN, LIST_DEVICES, ROUTES, UPLOAD_ARTIFACT, Route, RunInfo

Spec = dict[str, Any]


@pytest.fixture(scope="module")
def spec(sqlite_app: Any) -> Spec:
    return sqlite_app.client.app.openapi()  # type: ignore[no-any-return]


def _resolve(spec: Spec, schema: Spec) -> Spec:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    return _resolve(spec, spec["components"]["schemas"][ref.removeprefix("#/components/schemas/")])


def _field_problems(spec: Spec, result: type, schema: Spec, where: str) -> list[str]:
    """The dataclass fields of ``result`` (JSON keys the client reads) missing in ``schema``
    (for a JSON list, in the schema of its items)."""
    schema = _resolve(spec, schema)
    if schema.get("type") == "array":
        schema = _resolve(spec, schema.get("items", {}))
    properties = schema.get("properties", {})
    hints = typing.get_type_hints(result)
    problems = []
    for field in dataclasses.fields(result):
        if field.name not in properties:
            problems.append(f"{where}: the client reads {field.name!r}, not in the response")
            continue
        for inner in typing.get_args(hints[field.name]):
            if isinstance(inner, type) and dataclasses.is_dataclass(inner):
                items = _resolve(spec, properties[field.name]).get("items", {})
                problems += _field_problems(spec, inner, items, f"{where}.{field.name}[]")
    return problems


def contract_problems(spec: Spec, route: Route) -> list[str]:
    """What in ``spec`` does not match ``route`` as the client calls it (empty: all good)."""
    where = f"{route.method} {API_PREFIX}{route.path}"
    operation = spec["paths"].get(API_PREFIX + route.path, {}).get(route.method.lower())
    if operation is None:
        return [f"{where}: no such operation in the fleet's OpenAPI"]
    problems = []
    in_path = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
    if in_path != set(re.findall(r"{(\w+)}", route.path)):
        problems.append(f"{where}: the API's path parameters are {sorted(in_path)}")
    in_query = {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
    if unknown_query := set(route.query) - in_query:
        problems.append(f"{where}: the API has no query parameter {sorted(unknown_query)}")
    request = operation.get("requestBody")
    if route.body is None:
        if request is not None:
            problems.append(f"{where}: the API takes a body; the client sends none")
    else:
        media = "multipart/form-data" if route.files else "application/json"
        content = (request or {}).get("content", {}).get(media)
        if content is None:
            return [*problems, f"{where}: the API takes no {media} body"]
        body = _resolve(spec, content["schema"])
        sent = set(typing.get_type_hints(route.body)) | set(route.files)
        unknown = sent - set(body.get("properties", {}))
        missing = set(body.get("required", [])) - sent
        if unknown:
            problems.append(f"{where}: the client sends {sorted(unknown)}, unknown to the API")
        if missing:
            problems.append(f"{where}: the API requires {sorted(missing)}, never sent")
    answers = {c: r for c, r in operation["responses"].items() if c.startswith("2")}
    if not answers:
        return [*problems, f"{where}: no success response"]
    (answer,) = answers.values()
    if route.result is not None:
        schema = answer.get("content", {}).get("application/json", {}).get("schema", {})
        problems += _field_problems(spec, route.result, schema, where)
    elif route.method == "GET" and "application/octet-stream" not in answer.get("content", {}):
        problems.append(f"{where}: the answer is not application/octet-stream bytes")
    return problems


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
def test_every_route_of_the_client_is_in_the_openapi(spec: Spec, route: Route) -> None:
    assert contract_problems(spec, route) == []


def test_the_check_sees_a_renamed_route_parameter_or_field(spec: Spec) -> None:
    renamed = dataclasses.replace(GET_RUN, path="/run/{run_id}")
    assert "no such operation" in contract_problems(spec, renamed)[0]
    reparametrized = dataclasses.replace(GET_RUN, path="/runs/{id}")
    assert contract_problems(spec, reparametrized)  # /runs/{id} is not /runs/{run_id}

    class Misnamed(typing.TypedDict, total=False):
        format: str
        target: str
        checksum: str

    wrong_form = dataclasses.replace(UPLOAD_ARTIFACT, body=Misnamed)
    assert "['checksum'], unknown to the API" in contract_problems(spec, wrong_form)[0]

    @dataclasses.dataclass(frozen=True)
    class RunWithOwner(RunInfo):
        owner: str = ""

    wrong_result = dataclasses.replace(GET_RUN, result=RunWithOwner)
    assert "reads 'owner'" in contract_problems(spec, wrong_result)[0]

    wrong_query = dataclasses.replace(LIST_DEVICES, query=("model",))
    assert "no query parameter ['model']" in contract_problems(spec, wrong_query)[0]


# --- what the client really sends -------------------------------------------------------

_RUN = {
    "id": 3,
    "name": "r",
    "task": "digits-cnn",
    "strategy": "",
    "status": "created",
    "config": {},
    "final_model_version_id": None,
}
_DATA = b"checkpoint bytes"
_SHA256 = hashlib.sha256(_DATA).hexdigest()
_ARTIFACT = {
    "id": 5,
    "model_version_id": 2,
    "format": "torch",
    "target": "any",
    "filename": "model.pt",
    "size_bytes": len(_DATA),
    "sha256": _SHA256,
    "signature": None,
}
_MODEL = {"id": 2, "task": "digits-cnn", "stage": "registered", "metrics": {}, "artifacts": []}
_ROLLOUT = {
    "id": 4,
    "model_version_id": 2,
    "group": "wards",
    "status": "paused",
    "current_wave": 0,
    "reason": "",
    "waiting": 1,
    "progress": [{"wave": 0}],
    "devices": [
        {
            "device_id": "dev-1",
            "device_name": "pi-1",
            "wave": 0,
            "phase": "waiting",
            "attempts": 1,
            "error": "",
        }
    ],
}


_TOKEN = {"id": 6, "name": "ci", "role": "viewer", "prefix": "ffk_abcd", "revoked_at": None}
_WAVES = [{"devices": 2, "installed": 1}]
_SUMMARY = {**_ROLLOUT, "max_failure_rate": 0.1, "progress": _WAVES}
_DEVICE = {
    "id": "dev-1",
    "name": "pi-1",
    "hardware_target": "rpi5",
    "group": "wards",
    "status": "online",
    "model_version_id": 2,
}
_ENROLLED = {
    "device": {"id": "dev-1", "name": "pi-1"},
    "mqtt": {"username": "dev-1", "password": "p"},
}


_POLICY = {
    "id": 1,
    "group": "wards",
    "version": 2,
    "current": True,
    "signing": "approval",
    "document": {},
    "source": "group = 'wards'",
    "created_at": "2026-12-04T00:00:00Z",
    "created_by": "token:ci#1",
}
_PROMOTION = {
    "id": 5,
    "group": "wards",
    "policy_version": 2,
    "model_version_id": 2,
    "state": "approved",
    "decided_by": "token:ci#1",
}


def _policy_answer(method: str, path: str) -> httpx.Response:
    if path.startswith("/promotions"):
        return httpx.Response(200, json=_PROMOTION)
    if method == "POST":
        return httpx.Response(201, json=_POLICY)
    return httpx.Response(200, json=_POLICY if path != "/policies" else [_POLICY])


_TIMELINE_ITEM = {
    "at": "2026-12-04T20:00:00Z",
    "kind": "promotion",
    "subject": "promotion 5",
    "action": "promotion.reject",
    "actor": "system:promotions",
    "summary": "promotion 5 of model version 3 to group 'wards': rejected",
    "reason": "gates failed: accuracy 0.8 is below the gate 0.9",
}


def _lists() -> dict[tuple[str, str], object]:
    return {
        ("/runs", "GET"): {"items": [_RUN], "total": 1, "limit": 500, "offset": 0},
        ("/timeline", "GET"): [_TIMELINE_ITEM],
    }


def _answer(request: httpx.Request) -> httpx.Response:
    path = request.url.path.removeprefix(API_PREFIX)
    if path == "/rollouts":
        if request.method == "POST":
            return httpx.Response(201, json=_SUMMARY)
        return httpx.Response(200, json={"items": [_SUMMARY], "total": 1})
    lists = _lists()
    if (path, request.method) in lists:
        return httpx.Response(200, json=lists[path, request.method])
    if path.startswith(("/policies", "/promotions")):
        return _policy_answer(request.method, path)
    if path.startswith("/tokens"):
        if request.method == "POST":
            return httpx.Response(201, json={"token": "ffk_secret", "info": _TOKEN})
        return httpx.Response(200, json=[_TOKEN] if request.method == "GET" else _TOKEN)
    if path == "/groups":
        return httpx.Response(409, json={"detail": "a group named 'wards' already exists"})
    if path == "/devices" and request.method == "GET":
        return httpx.Response(200, json={"items": [_DEVICE], "total": None, "next_after": None})
    if path == "/devices":
        return httpx.Response(201, json=_ENROLLED)
    if path.endswith("/download"):
        return httpx.Response(200, content=_DATA)
    if path.endswith("/artifacts"):
        return httpx.Response(201, json=_ARTIFACT)
    if path.startswith("/models"):
        return httpx.Response(200, json=_MODEL)
    if path.startswith("/rollouts"):
        return httpx.Response(200, json=_ROLLOUT)
    if "/rounds/" in path:
        return httpx.Response(200, json={"round": 1})
    return httpx.Response(200, json=_RUN)


def _sent_fields(request: httpx.Request) -> set[str]:
    if not request.content:
        return set()
    if request.headers["content-type"].startswith("multipart/form-data"):
        parts = re.findall(rb'Content-Disposition: form-data; name="(\w+)"', request.content)
        return {name.decode() for name in parts}
    return set(json.loads(request.content))


def _every_call(client: FleetClient, tmp_path: Path) -> list[Callable[[], object]]:
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(_DATA)
    artifact = client.upload_artifact(
        2, checkpoint, format="torch", target="any", sha256=_SHA256, signature="s"
    )
    return [
        lambda: client.get_run(3),
        lambda: client.create_run(task="digits-cnn", name="r", strategy="fedavg", config={}),
        lambda: client.update_run(3, status="completed", final_model_version_id=2),
        lambda: client.report_round(3, 1, {"accuracy": 0.5, "loss": 1.0, "metrics": {}}),
        lambda: client.register_model(
            task="digits-cnn", source_run_id=3, source_round=1, parent_id=1, metrics={}
        ),
        lambda: client.get_model(2),
        lambda: client.deprecate_model(2),
        lambda: client.download(artifact, tmp_path / "copy.pt"),
        lambda: client.get_rollout(4),
        lambda: client.pause_rollout(4),
        lambda: client.resume_rollout(4),
        lambda: client.abort_rollout(4, rollback=True),
        lambda: client.create_rollout(
            model_version_id=2,
            group="wards",
            waves=[50, 100],
            max_failure_rate=0.1,
            ack_timeout_s=60,
        ),
        lambda: client.list_rollouts(),
        lambda: client.create_token(name="ci", role="viewer", ttl_days=3),
        lambda: client.list_tokens(),
        lambda: client.revoke_token(6),
        lambda: client.ensure_group("wards"),
        lambda: client.enroll_device(name="pi-1", hardware_target="rpi5", group="wards"),
        lambda: client.devices_running(2),
        lambda: client.rollouts_of_model(2),
        lambda: client.apply_policy("group = 'wards'"),
        lambda: client.list_policies(),
        lambda: client.get_policy("wards", version=1),
        lambda: client.approve_promotion(5),
        lambda: client.get_promotion(5),
        lambda: client.list_runs(status="created"),
        lambda: client.timeline("wards", model_version=3),
    ]


def test_the_client_calls_only_its_declared_routes(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return _answer(request)

    connection = FleetConnection(url="http://fleet.test", token="t")
    with FleetClient(connection, transport=httpx.MockTransport(record)) as client:
        for call in _every_call(client, tmp_path):
            call()
    used: set[Route] = set()
    for request in seen:
        path = request.url.path.removeprefix(API_PREFIX)
        matching = [
            r
            for r in ROUTES
            if r.method == request.method and re.fullmatch(re.sub(r"{\w+}", "[^/]+", r.path), path)
        ]
        assert len(matching) == 1, f"{request.method} {path} is not one declared route"
        route = matching[0]
        used.add(route)
        declared = set(typing.get_type_hints(route.body)) if route.body is not None else set()
        assert _sent_fields(request) <= declared | set(route.files), route
        sent_query = set(request.url.params)
        assert sent_query <= set(route.query), f"{route}: query {sent_query} is not declared"
    assert used == set(ROUTES), "a declared route the client never calls"
