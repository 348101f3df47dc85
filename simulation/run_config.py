"""The run-config mapping the simulation's settings sections produce.

A Flower run config is a flat mapping of kebab-case keys to scalars; each settings
section (``simulation/*_settings.py``) returns its keys as a :data:`RunConfigDict`, and
``simulation.settings.SimulateSettings`` merges them over the coordinator's core keys.
"""

from __future__ import annotations

from typing import TypeAlias

RunConfigDict: TypeAlias = dict[str, bool | int | float | str]
