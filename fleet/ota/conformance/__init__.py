"""The device conformance kit: ``fedfleet device conformance`` (docs/conformance.md).

It plays the fleet's side of the device protocol over a real broker against a device
agent a vendor wrote, and checks each message and behaviour by name:

- :mod:`.validate`: the one function every uplink message passes (the wire codecs today);
- :mod:`.workspace`: the kit's folder: keys, the device's ``device.toml`` and password,
  the signed test bundles, the kit's own Mosquitto and the agent process it starts;
- :mod:`.fleet_side`: the fleet's MQTT session: it records what the device sends, serves
  chunks (with faults on request) and sends signed, unsigned, forged or replayed commands;
- :mod:`.checks`: the named checks, in order, each with its timeout;
- :mod:`.report`: PASS/FAIL/SKIP lines, JUnit XML and JSON.

A fleet-side tool (it signs bundles and commands with the fleet's keys): it lives in
``fleet/``, and the ``device`` command group mounts it (``fedfleet/cli.py``).
"""
