"""The dashboard's policies page: each group's current promotion policy, its version
history (every ``fedfleet policy apply``), its timeline (run → version → gates → bundles
→ promotion → waves → drift → retraining, each automatic decision with its reason), and
the promotions.

Read-only: applying a policy and approving a promotion are admin operations of the API
and CLI (``fedfleet policy apply|approve``), where the fleet's checks live.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from fleet.crud import policies as crud
from fleet.crud.groups import group_by_name
from fleet.crud.timeline import timeline
from fleet.dashboard.pages import Pages, SessionDep
from fleet.dashboard.session import require_login

#: The newest timeline items a group's section shows (the API serves them all).
TIMELINE_ROWS = 50


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
            items = timeline(session, group)[-TIMELINE_ROWS:] if group is not None else []
            groups.append((current, versions, items))
        promotions = crud.list_promotions(session)
        return pages.render(
            request, "policies.html", principal=principal, groups=groups, promotions=promotions
        )

    return router
