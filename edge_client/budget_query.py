"""The site's answer to the budget pre-flight (``query.budget``): enough ε for the run?

Before a drift-started retraining run trains, its ServerApp asks every site
(:mod:`coordinator.budget_preflight`) whether the site's privacy ledger has budget for
the run. The site answers from its own ledger, read-only — no training, no ledger row,
no reservation — with one bit: ``budget-enough`` 1 or 0. It never says how much it
has spent or has left (docs/security.md).

The verdict is the one the site would give at training time, by construction: the same
settings (:class:`edge_client.settings.ClientSettings` from the same instruction
config), the same DP plan (:func:`edge_client.dp_training.plan_dp_training`: the site's
own DP-SGD when its policy requires DP, else the run's; its ledger and budget; the
mechanism of one training) and the same budget rule (:func:`privacy.ledger.verdict`),
asked for the run's ``num-server-rounds`` trainings at once. Since ε only grows, "all of
them fit" is exactly "every round's ``check_and_reserve`` would be granted", the worst
case of a site selected in every round. A site that does not train with DP spends no ε:
enough. Settings the site would refuse at training time (an invalid DP configuration)
are not enough. The site mod (:mod:`edge_client.site_policy`) still runs first (a task
off the allowlist is refused) and audits the one-bit reply like every other.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import Context, Message, MetricRecord, RecordDict

from edge_client.dp_training import plan_dp_training, run_rounds
from edge_client.protocol import keys as k
from edge_client.settings import ClientSettings
from edge_client.site_config import SiteConfig
from edge_client.site_policy import site_dp_config
from privacy.dp.config import dp_mode
from privacy.ledger import PrivacyLedger, verdict

log = logging.getLogger(__name__)


def budget_enough(context: Context, *, settings: ClientSettings, num_examples: int) -> bool:
    """Whether every training of the run (``num-server-rounds`` of them) would be
    granted by this site's ledger now (module doc). Reads the ledger, writes nothing."""
    site_dp = None
    if settings.site_config:
        site_dp = site_dp_config(SiteConfig.load(Path(settings.site_config)))
    if site_dp is None and dp_mode(context.run_config) != "local":
        return True  # no DP-SGD at this site: no ε charged to its ledger
    try:
        _dp, where, mechanism = plan_dp_training(
            context, settings=settings, num_examples=num_examples, dp=site_dp
        )
    except (TypeError, ValueError) as exc:
        log.info("budget pre-flight: the site would refuse this run's DP settings: %s", exc)
        return False
    requested = [mechanism] * run_rounds(context)
    if not where.path.exists():  # nothing spent yet; opening it would create the file
        granted, _before, _after = verdict(
            [], requested, budget=where.budget, accountant=where.accountant
        )
        return granted
    return PrivacyLedger(where.path, site=where.site).preview(
        task=settings.task, requested=requested, budget=where.budget, accountant=where.accountant
    )


def handle_budget_query(message: Message, context: Context) -> Message:
    """The ``query.budget`` handler: reply ``budget-enough`` 1 or 0, and nothing else."""
    from edge_client.app import load_client_data  # the app registers this handler

    settings = ClientSettings.from_message(context, message.content.config_records[k.CONFIG])
    data = load_client_data(settings)
    enough = budget_enough(context, settings=settings, num_examples=len(data.x_train))
    return Message(
        content=RecordDict({k.METRICS: MetricRecord({k.BUDGET_ENOUGH: int(enough)})}),
        reply_to=message,
    )
