"""Every wire contract of fedfleet, in one dependency-free place (device side).

* :mod:`edge_client.protocol.keys` — a federated round's record names, instruction and
  reply keys, run-config and node-config keys (ServerApp ↔ ClientApp);
* :mod:`edge_client.protocol.secagg` — SecAgg+ message types, records and their codecs;
* :mod:`edge_client.protocol.site` — a site's node-config keys;
* :mod:`edge_client.protocol.mqtt` — the MQTT topics and messages between the fleet and
  its devices.

It imports no other fedfleet package (the standard library and Flower's record types
only), so the coordinator, the fleet and the simulator import it without pulling in
device behaviour.
"""
