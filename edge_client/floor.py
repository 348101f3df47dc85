"""The device's anti-rollback floor: what it has accepted, so nothing older is accepted again.

Kept in ``floor.json`` next to the slots (written atomically, never lowered)::

    {"release": 1733300000000, "sha256": "<bundle>", "task": "digits-cnn",
     "command_issued_at": 1733300000123, "command_id": "r7-..."}

- ``release``: the highest signed ``manifest.release`` this device installed (0: none
  yet, or only bundles from before release numbers, manifest schema 1 or 2);
- ``sha256``: the bundle that set it (the same bundle may be installed again, e.g.
  after a rollback; any other bundle must have a higher release);
- ``task``: the task the device runs, pinned by its first install unless ``device.toml``
  sets ``task``; a bundle of another task is refused (the target is checked against
  ``device.toml`` by the bundle verifier);
- ``command_issued_at``/``command_id``: the last authentic command accepted
  (:mod:`edge_client.command_auth` refuses any not issued after it).

A rollback to the device's own previous slot does not lower the floor. A damaged file is
not read as "no floor": installs and signed commands are refused until it is restored
(or the device is re-provisioned), because an empty floor would accept any downgrade.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from firmware_images.manifest import Manifest

FLOOR_FILE = "floor.json"
_DIGITS = re.compile(r"^[0-9]{1,10}$")


class FloorDamagedError(Exception):
    """``floor.json`` exists but cannot be read; ``str(err)`` says how to fix it."""


@dataclass(frozen=True)
class Floor:
    """What the device has accepted so far (see the module doc)."""

    release: int = 0
    sha256: str | None = None
    task: str | None = None
    command_issued_at: int = 0
    command_id: str = ""


def read_floor(path: Path) -> Floor:
    """The floor on disk (no file: a new device, ``Floor()``); raise FloorDamagedError."""
    try:
        obj = json.loads(Path(path).read_text())
        floor = Floor(**obj)
        if not isinstance(floor.release, int) or not isinstance(floor.command_issued_at, int):
            raise TypeError("release and command_issued_at must be integers")
        return floor
    except FileNotFoundError:
        return Floor()
    except (ValueError, TypeError) as err:
        raise FloorDamagedError(
            f"the device's floor file {path} is damaged ({err}); restore it from a backup "
            "or re-provision the device (an empty floor would accept any downgrade)"
        ) from None


def floor_bytes(floor: Floor) -> bytes:
    return json.dumps(asdict(floor), sort_keys=True).encode()


def refusal(floor: Floor, manifest: Manifest, sha256: str, *, task: str | None) -> str | None:
    """Why this verified bundle must not be installed over ``floor``, or None.

    ``task`` is the task ``device.toml`` configures (None: the floor's pinned task).
    Returns ``"stage: message"``-free text; the caller names the stage."""
    expected = task or floor.task
    if expected is not None and manifest.task != expected:
        return (
            f"the bundle holds a {manifest.task!r} model but this device runs {expected!r}; "
            "roll out a bundle of the device's task"
        )
    release = manifest.release or 0
    if release == 0:
        if floor.release > 0:
            return (
                f"the bundle has no release number (manifest schema {manifest.schema}) and "
                f"this device already runs release {floor.release}; rebuild it with a release"
            )
        return None
    if release > floor.release or (release == floor.release and sha256 == floor.sha256):
        return None
    return (
        f"the bundle's signed release {release} is not newer than this device's floor "
        f"{floor.release} (a downgrade or a replayed bundle); build it with a higher --release"
    )


def raised(floor: Floor, manifest: Manifest, sha256: str) -> Floor:
    """The floor after installing ``manifest``'s bundle (never lower than before)."""
    release = manifest.release or 0
    if release >= floor.release:
        floor = replace(floor, release=release, sha256=sha256)
    return replace(floor, task=floor.task or manifest.task)


def model_version_of(manifest: Manifest) -> int | None:
    """The registry version id the signed manifest names (``image build --model N``)."""
    named = manifest.source.model_version
    return int(named) if named is not None and _DIGITS.match(named) else None
