"""fedfleet's device agent with one deliberate protocol flaw, for the conformance kit's
negative tests: ``python nonconforming_agent.py --config device.toml --flaw FLAW``.

- ``unsigned-rollback``: obeys a rollback that carries no signature;
- ``downgrade``: installs a validly signed bundle whatever its release (no floor check);
- ``replay``: obeys a signed command however old (forgets the last accepted ``issued_at``).

Everything else is the real agent (``fedfleet device run``), so the kit must name
exactly the check the flaw breaks.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

import edge_client.device_agent as device_agent
import edge_client.ota as ota
from edge_client.command_auth import Verdict
from edge_client.device_config import load_config

FLAWS = ("unsigned-rollback", "downgrade", "replay")


def _break(flaw: str) -> None:
    if flaw == "unsigned-rollback":
        checked = device_agent.check_command

        def lenient(command, **kwargs):  # type: ignore[no-untyped-def]
            if command.signature is None:
                return Verdict(ok=True)  # the flaw: an unsigned rollback is obeyed
            return checked(command, **kwargs)

        device_agent.check_command = lenient  # type: ignore[assignment]
    elif flaw == "downgrade":
        ota.refusal = lambda *_a, **_k: None  # type: ignore[assignment]
    elif flaw == "replay":
        checked = device_agent.check_command

        def forgetful(command, **kwargs):  # type: ignore[no-untyped-def]
            return checked(command, **{**kwargs, "last_issued_at": 0, "last_command_id": ""})

        device_agent.check_command = forgetful  # type: ignore[assignment]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--flaw", required=True, choices=FLAWS)
    args = parser.parse_args()
    _break(args.flaw)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_a: stop.set())
    agent = device_agent.DeviceAgent(load_config(args.config))
    agent.start()
    print(f"non-conforming agent ({args.flaw}) running", flush=True)
    stop.wait()
    agent.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
