"""The device's battery, read from Linux's ``/sys/class/power_supply``.

Each entry there is a power supply; a battery has ``type`` = ``Battery``, ``capacity``
(state of charge in percent, 0..100) and ``status`` (``Charging``, ``Discharging``,
``Full``, ``Not charging``, ``Unknown``). The agent reports the first battery (sorted by
name) in its telemetry as ``{"level": capacity / 100, "charging": status is Charging or
Full}`` (``Full`` means on a charger). No battery, or an unreadable one: nothing is
reported (a mains-powered device). The directory is ``power_supply_dir`` in
``device.toml`` (tests pass a fake one).
"""

from __future__ import annotations

from pathlib import Path

from edge_client.protocol.mqtt import Battery

POWER_SUPPLY_DIR = Path("/sys/class/power_supply")
_ON_CHARGER = {"charging", "full"}


def read_battery(root: Path = POWER_SUPPLY_DIR) -> Battery | None:
    """The first battery under ``root``, or ``None`` (no battery, or none readable)."""
    try:
        entries = sorted(p for p in root.iterdir() if p.is_dir())
    except OSError:
        return None
    for entry in entries:
        try:
            kind = (entry / "type").read_text().strip()
            if kind.lower() != "battery":
                continue
            percent = float((entry / "capacity").read_text().strip())
            status = (entry / "status").read_text().strip().lower()
        except (OSError, ValueError):
            continue
        if percent != percent:  # NaN: a broken driver, not a level
            continue
        level = min(100.0, max(0.0, percent)) / 100.0
        return Battery(level=level, charging=status in _ON_CHARGER)
    return None
