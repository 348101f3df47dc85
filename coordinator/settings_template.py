"""The commented ``coordinator.toml`` that ``fedfleet coordinator init`` writes.

Its keys are exactly those :class:`coordinator.superlink.CoordinatorSettings` reads, set
to the loader's defaults, so ``fedfleet coordinator up`` accepts the file as written
(``tests/coordinator/test_settings_template.py`` loads it with that loader).
"""

from __future__ import annotations

from pathlib import Path

COORDINATOR_TOML_TEMPLATE = """\
# fedfleet coordinator configuration (`fedfleet coordinator up --config coordinator.toml`).
# Relative paths are relative to this file's folder. docs/deployment.md walks through it.

[superlink]
address = "127.0.0.1:9092"        # host:port sites dial over TLS: fedfleet's gateway, which
                                  # serves only Flower's Fleet API (0.0.0.0:9092 accepts
                                  # sites from other machines)
control-address = "127.0.0.1:9093"  # where the SuperLink itself listens (Control API):
                                  # loopback only; operator commands run on this host
# operator-address = "0.0.0.0:9443"  # optional remote Control API, mutual TLS with a
                                  # certificate from `fedfleet certs create-operator NAME`
database = "state/superlink.db"   # registered sites and runs survive restarts

[tls]                             # `fedfleet certs create --out certs` makes all three
ca-cert = "certs/ca.crt"          # give this file to every site
certificate = "certs/server.crt"  # must name the address sites dial (certs create --host)
private-key = "certs/server.key"  # keep secret
# operator-ca = "certs/operator-ca.crt"  # with operator-address: the operators' own CA

[state]
dir = "state"                     # runs (`fedfleet run status`), sites.json, superlink.log
"""


def write_coordinator_toml(path: Path, *, force: bool = False) -> None:
    """Write the template to ``path``; ``ValueError`` if it exists and not ``force``."""
    if path.exists() and not force:
        raise ValueError(f"{path} already exists; pass --force to replace it or choose --out")
    if not path.parent.is_dir():
        raise ValueError(f"folder {path.parent} does not exist; create it or choose --out")
    path.write_text(COORDINATOR_TOML_TEMPLATE)
