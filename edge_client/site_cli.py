"""``fedfleet site``: the commands a hospital or bank site runs.

``init``/``join``/``audit`` live in :mod:`edge_client.site_commands` (issue 9);
``budget`` is the privacy ledger's (issue 4).
"""

from __future__ import annotations

from edge_client.site_budget import site_budget
from edge_client.site_commands import site_audit, site_init, site_join
from fedfleet.cli_support import sub_app

app = sub_app()
app.command("init")(site_init)
app.command("join")(site_join)
app.command("audit")(site_audit)
app.command("budget")(site_budget)
