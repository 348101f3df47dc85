"""The fleet server's settings: one typed object, built by a factory at start-up.

Precedence: command-line flags > ``FEDFLEET_FLEET_*`` environment variables > defaults.
Nothing is read at import time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fleet.db import check_schema_name, normalize_database_url

ENV_PREFIX = "FEDFLEET_FLEET_"
DEFAULT_DATA_DIR = Path("fleet-data")
MiB = 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetSettings:
    """Everything the fleet server needs to start.

    Attributes:
        database_url: ``sqlite:///PATH`` (default: ``fleet-data/fleet.db``) or
            ``postgresql://USER@HOST:PORT/DB``.
        database_schema: PostgreSQL schema to keep the fleet's tables in (default: the
            user's ``search_path``, normally ``public``).
        data_dir: Where the SQLite file and artifacts live by default.
        artifact_dir: Where uploaded model artifacts are stored (content-addressed).
        host: Interface ``fleet serve`` listens on.
        port: TCP port ``fleet serve`` listens on.
        max_body_bytes: Largest JSON or form request accepted (bytes).
        max_upload_bytes: Largest artifact upload accepted (bytes).
        offline_after_s: Seconds without a heartbeat after which a device is offline.
        rollout_release_after_s: Seconds a device of a sent rollout wave may stay silent
            (no heartbeat, no answer) before the rollout controller releases it from the
            wave (default: twice ``offline_after_s``).
        drift_threshold: A device's window drifts when one feature's PSI exceeds this.
        drift_min_devices: A drift event needs at least this many devices of the group
            drifting, each on its own window (one device's telemetry never raises one).
        drift_min_share: ... and at least this fraction of the group's devices on record
            as running the model version.
        drift_min_samples: Inputs per feature a device's window needs to be scored.
        protocol_v1_until: End of the device protocol v1 migration window (UTC; an
            ISO 8601 date or time, ``2027-03-31`` = its midnight): until then ``fleet
            mqtt`` serves devices that speak protocol v1; after it, or when unset, their
            messages are refused with a log line naming the version.
        session_ttl_s: Lifetime of a dashboard login (seconds).
        cookie_secure: Mark the dashboard cookie ``Secure`` (set when serving over HTTPS,
            directly or behind a TLS-terminating proxy).
        migrate_on_start: Upgrade the schema to the newest revision when the app starts.
        signing_public_key: Optional Ed25519 public key (PEM file); when set, artifact
            uploads must carry a valid signature of their SHA-256 digest.
        signing_key_dir: The only folder a promotion policy's ``[signing] key`` may lie
            in (unset: the fleet holds no signing key, and only ``approval = "operator"``
            policies are accepted).
        promotion_interval_s: Seconds between two steps of the promotion controller that
            ``fleet serve`` runs (gates, bundles, rollout, outcome; ``docs/policies.md``);
            0 turns it off.
    """

    database_url: str
    database_schema: str | None = None
    data_dir: Path = DEFAULT_DATA_DIR
    artifact_dir: Path = DEFAULT_DATA_DIR / "artifacts"
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 1 * MiB
    max_upload_bytes: int = 512 * MiB
    offline_after_s: float = 90.0
    rollout_release_after_s: float | None = None
    drift_threshold: float = 0.2
    drift_min_devices: int = 3
    drift_min_share: float = 0.2
    drift_min_samples: int = 100
    protocol_v1_until: datetime | None = None
    session_ttl_s: int = 8 * 3600
    cookie_secure: bool = False
    migrate_on_start: bool = True
    signing_public_key: Path | None = None
    signing_key_dir: Path | None = None
    promotion_interval_s: float = 2.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "database_url", normalize_database_url(self.database_url))
        if self.database_schema is not None:
            check_schema_name(self.database_schema)
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be between 1 and 65535, got {self.port}")
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be at least 1024, got {self.max_body_bytes}")
        if self.max_upload_bytes < 1024:
            raise ValueError(f"max_upload_bytes must be at least 1024, got {self.max_upload_bytes}")
        if self.offline_after_s <= 0:
            raise ValueError(f"offline_after_s must be positive, got {self.offline_after_s}")
        if self.rollout_release_after_s is not None and self.rollout_release_after_s <= 0:
            raise ValueError(
                "rollout_release_after_s must be positive (unset: twice offline_after_s), "
                f"got {self.rollout_release_after_s}"
            )
        self.drift_rule()  # raises ValueError naming the setting
        if self.session_ttl_s < 60:
            raise ValueError(f"session_ttl_s must be at least 60, got {self.session_ttl_s}")
        if self.signing_public_key is not None and not self.signing_public_key.is_file():
            raise ValueError(
                f"signing public key {self.signing_public_key} does not exist; give the PEM "
                "file written by `fedfleet keys create`"
            )
        if self.signing_key_dir is not None and not self.signing_key_dir.is_dir():
            raise ValueError(
                f"signing key folder {self.signing_key_dir} does not exist; create it (mode "
                "0700) and keep the keys the fleet may sign with there"
            )
        if not 0 <= self.promotion_interval_s <= 3600:
            raise ValueError(
                f"promotion_interval_s must be in 0..3600 (0: off), got {self.promotion_interval_s}"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> FleetSettings:
        """Build settings from ``FEDFLEET_FLEET_*`` variables, then ``overrides``.

        ``overrides`` whose value is None are ignored (unset command-line flags).
        Raises ValueError naming the variable when one cannot be parsed.
        """
        env = os.environ if environ is None else environ
        given = {key: value for key, value in overrides.items() if value is not None}
        data_dir = Path(
            given.get("data_dir") or env.get(ENV_PREFIX + "DATA_DIR") or DEFAULT_DATA_DIR
        )
        values: dict[str, Any] = {
            "data_dir": data_dir,
            "database_url": env.get(ENV_PREFIX + "DATABASE_URL")
            or f"sqlite:///{data_dir / 'fleet.db'}",
            "artifact_dir": Path(env.get(ENV_PREFIX + "ARTIFACT_DIR") or data_dir / "artifacts"),
        }
        parsers: dict[str, Any] = {
            "database_schema": str,
            "host": str,
            "port": int,
            "max_body_bytes": int,
            "max_upload_bytes": int,
            "offline_after_s": float,
            "rollout_release_after_s": float,
            "drift_threshold": float,
            "drift_min_devices": int,
            "drift_min_share": float,
            "drift_min_samples": int,
            "protocol_v1_until": parse_utc,
            "session_ttl_s": int,
            "cookie_secure": _parse_bool,
            "migrate_on_start": _parse_bool,
            "signing_public_key": Path,
            "signing_key_dir": Path,
            "promotion_interval_s": float,
        }
        for name, parse in parsers.items():
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is None or raw == "":
                continue
            try:
                values[name] = parse(raw)
            except ValueError as exc:
                raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r}: {exc}") from exc
        values.update(given)
        return cls(**values)

    @property
    def release_after_s(self) -> float:
        """Seconds of silence after which a device is released from its rollout wave."""
        if self.rollout_release_after_s is not None:
            return self.rollout_release_after_s
        return 2 * self.offline_after_s

    def drift_rule(self) -> Any:
        """The drift agreement rule (:class:`fleet.ota.drift.AgreementRule`) of these settings."""
        from fleet.ota.drift import AgreementRule

        return AgreementRule(
            threshold=self.drift_threshold,
            min_devices=self.drift_min_devices,
            min_share=self.drift_min_share,
            min_samples=self.drift_min_samples,
        )

    def with_changes(self, **changes: Any) -> FleetSettings:
        """A copy with some fields replaced (validated again)."""
        return replace(self, **changes)


def parse_utc(raw: str) -> datetime:
    """An ISO 8601 date or date-time as an aware UTC datetime (no zone given: UTC)."""
    try:
        value = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("expected an ISO 8601 date or time, e.g. 2027-03-31") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true/false")
