"""A real ``fedfleet fleet serve`` for end-to-end tests outside ``tests/fleet``.

``tests/fleet/conftest.py`` owns the server helper (``running_server``: a free loopback
port, SQLite in a folder, stopped by PID). It is loaded here under its own module name,
because importlib mode gives ``conftest`` files no package path to import them by.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def fleet_fixtures() -> Any:
    """The module ``tests/fleet/conftest.py`` (its ``running_server``)."""
    name = "fleet_fixtures_for_e2e"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).parents[1] / "fleet" / "conftest.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _fedfleet(args: list[str], *, cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "fedfleet"), *args],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


_ADMIN_TOKENS: dict[str, str] = {}


def create_token(server: Any, role: str, *, cwd: Path) -> str:
    """A new API token of ``role`` from the real ``fedfleet fleet token create``: the first
    admin token with ``--bootstrap`` on the server's database, the others over its API."""
    key = f"{server.base_url} {server.database_url}"
    admin = _ADMIN_TOKENS.get(key)
    if admin is None:
        admin = _fedfleet(
            ["fleet", "token", "create", "--bootstrap", "--database-url", server.database_url],
            cwd=cwd,
            env={},
        )
        _ADMIN_TOKENS[key] = admin
    if role == "admin":
        return admin
    return _fedfleet(
        ["fleet", "token", "create", "--role", role, "--fleet-url", server.base_url],
        cwd=cwd,
        env={"FEDFLEET_TOKEN": admin},
    )
