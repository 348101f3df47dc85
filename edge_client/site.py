"""The site runtime: its key pair, its ``site.toml`` template, and its SuperNode.

``init_site`` writes an ECDSA P-384 key pair in OpenSSH format (what Flower 1.42's
SuperNode authentication takes: the operator registers ``NAME.pub``; the SuperNode
signs with ``NAME.key``) and a commented ``site.toml``. ``supernode_command`` is the
``flower-supernode`` command line of ``fedfleet site join``: TLS with the
coordinator's root certificate, node authentication with the site's private key, the
node config naming the site config (so the ClientApp reads the site's own data and
applies its policy and audit log), and ``--isolation process``: the SuperNode starts no
app code itself; ``site join`` runs :mod:`edge_client.site_runner`, which runs only the
code the site pinned.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge_client.protocol.site import NC_SITE_CONFIG
from edge_client.site_config import NAME_PATTERN, SITE_TOML_TEMPLATE, SiteConfig


@dataclass(frozen=True)
class SiteFiles:
    """What ``fedfleet site init`` wrote."""

    config: Path
    private_key: Path
    public_key: Path


def init_site(*, name: str, out_dir: Path, overwrite: bool = False) -> SiteFiles:
    """Create ``NAME.key``, ``NAME.pub`` and ``site.toml`` in ``out_dir``.

    Refuses to replace existing files unless ``overwrite`` (a new key locks the site
    out until the operator registers it again).
    """
    if not NAME_PATTERN.match(name):
        raise ValueError(
            f"site name {name!r} must be lowercase letters, digits, '.', '_' or '-' (at most 63)"
        )
    files = SiteFiles(
        config=out_dir / "site.toml",
        private_key=out_dir / f"{name}.key",
        public_key=out_dir / f"{name}.pub",
    )
    for path in (files.config, files.private_key, files.public_key):
        if path.exists() and not overwrite:
            raise ValueError(f"{path} already exists; choose another --out or pass --force")
    out_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    fd = os.open(files.private_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private)
    files.public_key.write_bytes(public + f" fedfleet-site-{name}\n".encode())
    files.config.write_text(SITE_TOML_TEMPLATE.format(name=name))
    return files


def supernode_command(config: SiteConfig, *, max_retries: int | None = None) -> list[str]:
    """The ``flower-supernode`` command of ``fedfleet site join`` for ``config``."""
    node_config = f"{NC_SITE_CONFIG}={json.dumps(str(config.source))}"
    command = [
        str(Path(sys.executable).parent / "flower-supernode"),
        "--superlink",
        config.coordinator_address,
        "--root-certificates",
        str(config.ca_cert),
        "--auth-supernode-private-key",
        str(config.private_key),
        "--node-config",
        node_config,
        "--port",
        str(config.runtime_port),
        "--isolation",
        "process",  # app code runs only through edge_client.site_runner
    ]
    if max_retries is not None:
        command += ["--max-retries", str(max_retries)]
    return command


def supernode_env() -> dict[str, str]:
    """Environment of the SuperNode: telemetry off, the virtualenv's bin/ on PATH (the
    SuperNode starts ``flower-superexec`` and ``flwr-clientapp`` by name)."""
    env = dict(os.environ)
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def check_ready(config: SiteConfig) -> None:
    """Refuse to join when the data cannot be used: schema errors surface here, before
    any connection or training (one ValueError naming the column and type)."""
    from edge_client.site_data import load_site_data

    for task in config.policy.allowed_tasks:
        from tasks import available_tasks, get_task

        if task not in available_tasks():
            raise ValueError(
                f"policy.allowed-tasks names unknown task {task!r}; "
                f"known: {', '.join(available_tasks())}"
            )
        spec = get_task(task)
        num_features = 1
        for dim in spec.input_shape:
            num_features *= dim
        load_site_data(config.data, num_features=num_features, num_classes=spec.num_classes)


ACTIVATION_REFUSED = "Failed to activate SuperNode"  # Flower 1.42 SuperNode, code 2004


def _run_once(config: SiteConfig) -> tuple[int, bool]:
    """Run the SuperNode until it exits, echoing its output; return (exit code, whether
        the SuperLink refused to activate it). On SIGTERM/Ctrl-C (a KeyboardInterrupt, see
    :func:`run_supernode`) its whole tree is stopped before the interrupt goes on."""
    process = subprocess.Popen(
        supernode_command(config),
        env=supernode_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )

    refused = threading.Event()

    def _echo() -> None:  # a thread: the main thread must reap the SuperNode promptly,
        # or its SuperExec (which exits when its parent's PID is gone) keeps the pipe open
        for line in process.stdout or ():
            if ACTIVATION_REFUSED in line:
                refused.set()
            sys.stdout.write(line)
            sys.stdout.flush()

    reader = threading.Thread(target=_echo, daemon=True)
    reader.start()
    try:
        code = process.wait()
    except KeyboardInterrupt:
        from fedfleet.stopping import stop_tree

        stop_tree(process, timeout=5.0)  # the SuperNode and the SuperExec it started
        reader.join(timeout=5)
        raise
    reader.join(timeout=10)
    return code, refused.is_set()


def run_supernode(
    config: SiteConfig, *, rejoin_timeout: float = 150.0, retry_s: float = 5.0
) -> int:
    """Serve rounds until stopped (the SuperNode, and the site's runner of pinned code);
    return the SuperNode's exit code.

    After a crash the coordinator still counts this site online for up to two heartbeat
    intervals (60 s in Flower 1.42) and refuses a second activation meanwhile; so an
    activation refusal is retried every ``retry_s`` seconds for up to ``rejoin_timeout``
    seconds (a key that was never registered fails the same way, and then gives up).
    """
    from edge_client.site_runner import start_runner

    def _stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM stops like Ctrl-C: the whole tree, then exit 0

    previous = signal.signal(signal.SIGTERM, _stop)
    runner = start_runner(config)
    try:
        return _serve(config, rejoin_timeout=rejoin_timeout, retry_s=retry_s)
    except KeyboardInterrupt:  # in a round or while waiting to rejoin
        print(f"site {config.name}: stopped", file=sys.stderr, flush=True)
        return 0
    finally:
        runner.stop()
        signal.signal(signal.SIGTERM, previous)


def _serve(config: SiteConfig, *, rejoin_timeout: float, retry_s: float) -> int:
    deadline = time.monotonic() + rejoin_timeout
    while True:
        code, refused = _run_once(config)
        if not refused or time.monotonic() + retry_s > deadline:
            if refused:
                print(
                    f"site {config.name}: the coordinator refused this site's key; is it "
                    "registered (`fedfleet coordinator add-site`)?",
                    file=sys.stderr,
                )
            return code
        print(
            f"site {config.name}: not activated (an earlier session may still be open on "
            f"the coordinator after a crash); retrying in {retry_s:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        time.sleep(retry_s)
