"""Suite-wide settings: Flower never phones home and never touches ~/.flwr."""

from __future__ import annotations

import os
import tempfile

os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
os.environ.setdefault("FLWR_HOME", tempfile.mkdtemp(prefix="fedfleet-flwr-home-"))
os.environ["FEDFLEET_STRICT_CLI"] = "1"
