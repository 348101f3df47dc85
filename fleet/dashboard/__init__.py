"""The server-rendered dashboard (see :mod:`fleet.dashboard.routes`)."""

from __future__ import annotations

from fastapi import FastAPI


def mount_dashboard(app: FastAPI) -> None:
    """Add the dashboard pages and static files to ``app``."""
    from fleet.dashboard.routes import install

    install(app)
