"""The device side of the fleet: what the MQTT service (``fedfleet fleet mqtt``) runs.

- :mod:`fleet.ota.bridge`: the MQTT bridge (device status, acknowledgements and telemetry
  in; install commands and bundle chunks out);
- :mod:`fleet.ota.fanout`: one bundle's chunks gathered and sent once for many devices;
- :mod:`fleet.ota.controller`: the rollout controller (waves, health, abort, rollback);
- :mod:`fleet.ota.release`: devices released from a wave (retired, or silent too long);
- :mod:`fleet.ota.telemetry` and :mod:`fleet.ota.drift`: the periodic drift check of the
  stored telemetry and its PSI math;
- :mod:`fleet.ota.broker_config`: Mosquitto's password, ACL and config files;
- :mod:`fleet.ota.cli`: ``fedfleet rollout`` and ``fedfleet fleet broker-config|mqtt``.

Imports run one way: this package uses the admin app (``fleet.models``, ``fleet.db``,
``fleet.crud``, ``fleet.audit``); the admin app (API, dashboard, CRUD, its CLI) never
imports ``fleet.ota``. What both need (creating and viewing rollouts, telemetry summaries,
drift events) is admin CRUD (``fleet.crud.rollouts``, ``fleet.crud.telemetry``).
"""
