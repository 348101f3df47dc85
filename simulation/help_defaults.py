"""The defaults ``fedfleet simulate --help`` shows, as it shows them.

The values are :class:`simulation.settings.SimulateSettings`'s (written once, there);
this table only lets the help render without importing the settings, which load torch
and Flower (seconds), so ``fedfleet simulate --help`` answers at once.
``tests/simulation/test_settings_defaults.py`` checks every entry against the settings.
"""

from __future__ import annotations

# How the help shows a setting whose default is the task's (a ``None`` in the settings).
TASK_DEFAULT = "the task's"

SHOWN_DEFAULTS: dict[str, str] = {
    "task": "digits-cnn",
    "strategy": "fedavg",
    "clients": "10",
    "clients_per_round": "10",
    "rounds": "3",
    "local_epochs": TASK_DEFAULT,
    "batch_size": TASK_DEFAULT,
    "lr": TASK_DEFAULT,
    "momentum": TASK_DEFAULT,
    "partition": "iid",
    "seed": "0",
    "engine": "inprocess",
    "fraction_evaluate": "0",
    "fairness_reweigh": "off",
    "equal_opportunity": "0",
    "attackers": "0",
    "selection": "random",
    "over_select": "0",
    "secagg": "off",
    "secagg_degree": "0",
    "secagg_threshold": "0",
    "secagg_clip": "1.0",
    "secagg_bits": "16",
    "dropout": "0",
    "dropout_stage": "after-key-share",
    "app_workers": "auto",
    "threads": "1",
    "ray_workers": "0",
    "dp": "none",
    "delta": "1e-5",
    "clip": "1.0",
    "dp_clipping": "fixed",
    "dp_accountant": "rdp",
}


def shown(value: object) -> str:
    """A setting's default as the help shows it: on/off for switches, 0 for 0.0, 1e-5
    for 1e-05, "the task's" for a setting the task decides (``None``)."""
    if value is None:
        return TASK_DEFAULT
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return "0" if value == 0 else repr(value).replace("e-0", "e-")
    return str(value)
