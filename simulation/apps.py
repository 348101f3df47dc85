"""The ClientApp every simulation engine runs, and how the in-process engine treats apps.

Both engines must run the same ClientApp, or they cannot give the same results:
:func:`build_simulation_client_app` is fedfleet's ClientApp with the simulation's mods
(dropouts, attacks, speed stamps — each inert unless its run-config key is set), and
the module-level ``app`` is the component the Flower engine names
(``simulation.apps:app``).

:func:`batches_training` decides whether the in-process engine may batch an app's local
training: only an app whose training goes through ``tasks.train_local`` — fedfleet's
own ClientApp, marked by :func:`mark_batchable` — is run as a cohort. Any other
ClientApp (a third-party Flower app) is called message by message, exactly as Flower's
engine would call it.
"""

from __future__ import annotations

from flwr.clientapp import ClientApp

_BATCHABLE = "_fedfleet_trains_with_train_local"


def mark_batchable(client_app: ClientApp) -> ClientApp:
    """Declare that ``client_app`` trains with ``tasks.train_local`` (and nothing else
    that a cooperative schedule could change)."""
    setattr(client_app, _BATCHABLE, True)
    return client_app


def batches_training(client_app: ClientApp) -> bool:
    """Whether the in-process engine may batch ``client_app``'s local training."""
    return bool(getattr(client_app, _BATCHABLE, False))


def build_simulation_client_app() -> ClientApp:
    """fedfleet's ClientApp with the simulation mods, marked batchable."""
    from edge_client.app import build_client_app
    from simulation.attacks import attack_mod
    from simulation.dropout import dropout_mod
    from simulation.speeds import speed_mod

    return mark_batchable(build_client_app(mods=[dropout_mod, attack_mod, speed_mod]))


# The ClientApp component the Flower engine's app folder names.
app = build_simulation_client_app()
