"""Defaults are written once: the Flower App config in pyproject.toml agrees with them.

``[tool.flwr.app.config]`` is Flower's (``flwr run .`` reads it) and cannot be derived
from code, so this test holds it to the typed configs that parse those keys; the
simulator's defaults are read from the same configs (``simulation.settings``).
"""

from __future__ import annotations

from pathlib import Path

import tomllib

from coordinator.config import RunConfig
from privacy.secagg.config import SecAggConfig
from simulation.settings import SimulateSettings

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_flower_app_config_agrees_with_the_typed_defaults() -> None:
    app_config = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
    defaults = {**RunConfig().as_run_config(), **SecAggConfig().as_run_config()}

    unknown = sorted(set(app_config) - set(defaults))
    differ = {
        k: (v, defaults[k]) for k, v in app_config.items() if k in defaults and v != defaults[k]
    }

    assert not unknown, f"pyproject app config keys no typed config parses: {unknown}"
    assert not differ, f"pyproject app config (value, default) disagree: {differ}"


def test_simulate_defaults_are_the_coordinators() -> None:
    core = RunConfig()
    settings = SimulateSettings()

    run_config = settings.flower_run_config()

    assert run_config == {**core.as_run_config(), "selection": "random"}


def test_the_help_shows_the_settings_defaults() -> None:
    # Prepare: what `fedfleet simulate --help` shows without importing the settings.
    from dataclasses import fields

    from simulation.help_defaults import SHOWN_DEFAULTS, shown

    defaults = {f.name: f.default for f in fields(SimulateSettings)}
    # Execute
    differ = {
        name: (text, shown(defaults.get(name)))
        for name, text in SHOWN_DEFAULTS.items()
        if name not in defaults or text != shown(defaults[name])
    }
    # Assert
    assert not differ, f"simulation/help_defaults.py (shown, settings) disagree: {differ}"
    assert shown(1e-05) == "1e-5" and shown(0.0) == "0" and shown(True) == "on"
