"""The dashboard's policies page: each group's current promotion policy, its version
history (every ``fedfleet policy apply``), and the promotions waiting for an operator.

Read-only: applying a policy and approving a promotion are admin operations of the API
and CLI (``fedfleet policy apply|approve``), where the fleet's checks live.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from fleet.crud import policies as crud
from fleet.crud.groups import group_by_name
from fleet.dashboard.pages import Pages, SessionDep
from fleet.dashboard.session import require_login


def policies_router(pages: Pages) -> APIRouter:
    """``GET /policies``."""
    router = APIRouter(include_in_schema=False)

    @router.get("/policies")
    def policies(request: Request, session: SessionDep) -> HTMLResponse:
        principal = require_login(request, session)
        groups = []
        for current in crud.current_policies(session):
            group = group_by_name(session, current.group)
            versions = crud.history(session, group) if group is not None else [current]
            groups.append((current, versions))
        promotions = crud.list_promotions(session)
        return pages.render(
            request, "policies.html", principal=principal, groups=groups, promotions=promotions
        )

    return router
