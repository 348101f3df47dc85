"""Node-config keys of a site: what a silo's SuperNode is started with (issue 9).

``fedfleet site join`` turns ``site.toml`` into the SuperNode's ``--node-config``; a
SuperNode started by hand may give the same keys itself (``docs/deployment.md``).
"""

from __future__ import annotations

from typing import Final

# The site's site.toml (data, policy, audit); absent for a simulated client.
NC_SITE_CONFIG: Final = "site-config"
# The site's state folder (privacy ledger, audit log) and name, without a site.toml.
NC_STATE_DIR: Final = "state-dir"
NC_SITE_NAME: Final = "site-name"
# The site's hard (ε, δ) budget per task, and the accountant of its budget decisions.
NC_DP_BUDGET_EPSILON: Final = "dp-budget-epsilon"
NC_DP_BUDGET_DELTA: Final = "dp-budget-delta"
NC_DP_ACCOUNTANT: Final = "dp-accountant"
