"""The token cache: entries die with their TTL, their token's expiry and any revocation.

Unit tests drive :class:`fleet.token_cache.TokenCache` with a fake clock; the integration
tests run two apps on one database (two API replicas) and revoke a token that both have
cached — through the API of one of them and through the database as the CLI does.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from fleet.audit import Actor
from fleet.crud import tokens as token_crud
from fleet.db import session_scope
from fleet.models.common import utcnow
from fleet.settings import FleetSettings
from fleet.token_cache import TokenCache


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_lives_for_its_epoch_its_ttl_and_its_token() -> None:
    # Prepare
    clock = FakeClock()
    cache: TokenCache[str] = TokenCache(ttl_s=30, clock=clock)
    now = utcnow()
    cache.put("h1", "alice", epoch=0, expires_at=None)
    cache.put("h2", "bob", epoch=0, expires_at=now + timedelta(seconds=5))
    # Execute / Assert
    assert cache.get("h1", epoch=0, now=now) == "alice"
    assert cache.get("h2", epoch=0, now=now + timedelta(seconds=6)) is None  # token expired
    clock.now += 31
    assert cache.get("h1", epoch=0, now=now) is None  # past the TTL
    cache.put("h1", "alice", epoch=0, expires_at=None)
    assert cache.get("h1", epoch=1, now=now) is None  # a token was revoked somewhere
    assert len(cache) == 0
    cache.put("h1", "alice", epoch=1, expires_at=None)
    cache.clear()
    assert cache.get("h1", epoch=1, now=now) is None


def test_a_zero_ttl_caches_nothing_and_a_negative_one_is_refused() -> None:
    cache: TokenCache[str] = TokenCache(ttl_s=0)
    cache.put("h", "alice", epoch=0, expires_at=None)
    assert cache.get("h", epoch=0, now=utcnow()) is None
    with pytest.raises(ValueError, match="ttl_s must be zero"):
        TokenCache(ttl_s=-1)


def _viewer(client: TestClient, admin: dict[str, str]) -> tuple[int, dict[str, str]]:
    created = client.post("/api/v1/tokens", json={"name": "ci", "role": "viewer"}, headers=admin)
    assert created.status_code == 201
    return created.json()["info"]["id"], {"Authorization": f"Bearer {created.json()['token']}"}


def test_a_token_revoked_on_one_replica_is_refused_at_once_by_another(
    client: TestClient,
    admin: dict[str, str],
    app_factory: Callable[[FleetSettings], TestClient],
    settings: FleetSettings,
) -> None:
    # Prepare: a second replica on the same database; both have the token cached.
    replica = app_factory(settings)
    token_id, viewer = _viewer(client, admin)
    for app in (client, replica):
        assert app.get("/api/v1/devices", headers=viewer).status_code == 200
        assert app.get("/api/v1/me", headers=viewer).status_code == 200
    cache = replica.app.state.token_cache  # type: ignore[attr-defined]
    assert len(cache) >= 1
    # Execute: revoke through the first replica's API.
    assert client.delete(f"/api/v1/tokens/{token_id}", headers=admin).status_code == 200
    # Assert: both refuse the very next request, the gate (a body route) and the dependency.
    for app in (client, replica):
        assert app.get("/api/v1/devices", headers=viewer).status_code == 401
        assert app.post("/api/v1/groups", json={"name": "g"}, headers=viewer).status_code == 401
    # Tokens still valid stay served (from a refilled cache).
    assert replica.get("/api/v1/me", headers=admin).status_code == 200


def test_a_token_revoked_in_the_database_is_refused_at_once(
    client: TestClient, admin: dict[str, str]
) -> None:
    # Prepare
    token_id, viewer = _viewer(client, admin)
    assert client.get("/api/v1/me", headers=viewer).status_code == 200
    # Execute: revoke as `fedfleet fleet token revoke --database-url` does, in another session.
    engine = client.app.state.engine  # type: ignore[attr-defined]
    with session_scope(engine, write=True) as session:
        actor = Actor(name="cli:test", role="admin", source="cli")
        assert token_crud.revoke_token(session, token_id, actor=actor) is not None
    # Assert
    assert client.get("/api/v1/me", headers=viewer).status_code == 401
    assert client.get("/api/v1/me", headers=admin).status_code == 200
