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


def create_token(server: Any, role: str, *, cwd: Path) -> str:
    """A new API token of ``role`` from the real ``fedfleet fleet token create``."""
    created = subprocess.run(
        [str(Path(sys.executable).parent / "fedfleet"), "fleet", "token", "create", "--role", role],
        cwd=cwd,
        env={**os.environ, "FEDFLEET_FLEET_DATA_DIR": str(server.data_dir)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert created.returncode == 0, created.stderr
    return created.stdout.strip().splitlines()[-1]
