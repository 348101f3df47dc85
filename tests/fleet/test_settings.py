"""Settings: built by a factory from flags and environment, validated with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.db import normalize_database_url
from fleet.settings import FleetSettings


def test_defaults_put_everything_under_the_data_dir() -> None:
    settings = FleetSettings.from_env({})
    assert settings.database_url == "sqlite:///fleet-data/fleet.db"
    assert settings.artifact_dir == Path("fleet-data/artifacts")
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)


def test_flags_override_environment_which_overrides_defaults(tmp_path: Path) -> None:
    env = {
        "FEDFLEET_FLEET_DATA_DIR": str(tmp_path),
        "FEDFLEET_FLEET_PORT": "9000",
        "FEDFLEET_FLEET_OFFLINE_AFTER_S": "30",
        "FEDFLEET_FLEET_COOKIE_SECURE": "true",
    }
    settings = FleetSettings.from_env(env, port=9100, host=None)
    assert settings.port == 9100 and settings.host == "127.0.0.1"
    assert settings.offline_after_s == 30.0 and settings.cookie_secure is True
    assert settings.database_url == f"sqlite:///{tmp_path / 'fleet.db'}"
    assert settings.artifact_dir == tmp_path / "artifacts"


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"FEDFLEET_FLEET_PORT": "eighty"}, "FEDFLEET_FLEET_PORT"),
        ({"FEDFLEET_FLEET_PORT": "70000"}, "between 1 and 65535"),
        ({"FEDFLEET_FLEET_COOKIE_SECURE": "maybe"}, "true/false"),
        ({"FEDFLEET_FLEET_DATABASE_URL": "mysql://x/y"}, "unsupported database"),
        ({"FEDFLEET_FLEET_DATABASE_URL": "sqlite://"}, "in-memory"),
        ({"FEDFLEET_FLEET_DATABASE_SCHEMA": "Robert'); DROP"}, "invalid schema name"),
        ({"FEDFLEET_FLEET_OFFLINE_AFTER_S": "0"}, "must be positive"),
        ({"FEDFLEET_FLEET_SIGNING_PUBLIC_KEY": "/nonexistent.pem"}, "does not exist"),
        ({"FEDFLEET_FLEET_SIGNING_KEY_DIR": "/nonexistent-keys"}, "signing key folder"),
        ({"FEDFLEET_FLEET_PROMOTION_INTERVAL_S": "-1"}, "promotion_interval_s must be in"),
    ],
)
def test_bad_settings_say_what_to_fix(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(")):
        FleetSettings.from_env(env)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u@h:5432/db", "postgresql+psycopg://u@h:5432/db"),
        ("postgres://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg://u:p@h/db", "postgresql+psycopg://u:p@h/db"),
        ("sqlite:////abs/fleet.db", "sqlite:////abs/fleet.db"),
    ],
)
def test_database_urls_are_normalized(given: str, expected: str) -> None:
    assert normalize_database_url(given) == expected


def test_creating_settings_does_not_touch_the_database(tmp_path: Path) -> None:
    FleetSettings(database_url=f"sqlite:///{tmp_path / 'x' / 'fleet.db'}")
    assert not (tmp_path / "x").exists()


def test_rollout_release_bound_defaults_to_twice_the_heartbeat_timeout() -> None:
    base = {"FEDFLEET_FLEET_DATABASE_URL": "sqlite:///x.db"}
    assert FleetSettings.from_env(base).release_after_s == 180.0
    tuned = FleetSettings.from_env({**base, "FEDFLEET_FLEET_OFFLINE_AFTER_S": "30"})
    assert tuned.release_after_s == 60.0
    assert tuned.with_changes(offline_after_s=10).release_after_s == 20.0
    fixed = FleetSettings.from_env({**base, "FEDFLEET_FLEET_ROLLOUT_RELEASE_AFTER_S": "45"})
    assert fixed.release_after_s == 45.0
    with pytest.raises(ValueError, match="rollout_release_after_s must be positive"):
        FleetSettings.from_env({**base, "FEDFLEET_FLEET_ROLLOUT_RELEASE_AFTER_S": "-1"})


def test_the_protocol_v1_window_is_a_utc_date_or_time_and_off_by_default() -> None:
    from datetime import UTC, datetime

    assert FleetSettings.from_env({}).protocol_v1_until is None
    day = FleetSettings.from_env({"FEDFLEET_FLEET_PROTOCOL_V1_UNTIL": "2027-03-31"})
    assert day.protocol_v1_until == datetime(2027, 3, 31, tzinfo=UTC)
    local = FleetSettings.from_env({"FEDFLEET_FLEET_PROTOCOL_V1_UNTIL": "2027-03-31T02:00+02:00"})
    assert local.protocol_v1_until == datetime(2027, 3, 31, tzinfo=UTC)
    with pytest.raises(ValueError, match=r"PROTOCOL_V1_UNTIL='soon'.*ISO 8601"):
        FleetSettings.from_env({"FEDFLEET_FLEET_PROTOCOL_V1_UNTIL": "soon"})
