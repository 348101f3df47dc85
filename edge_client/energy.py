"""Measured energy and CO2 of a site's training, with codecarbon (optional).

With ``[energy] codecarbon = true`` in site.toml, :func:`energy_mod` runs each train
instruction inside codecarbon's ``OfflineEmissionsTracker`` (no network: the grid
intensity is codecarbon's own average for ``country-iso-code``; power from RAPL, the
GPU's NVML or, failing those, codecarbon's CPU TDP table) and adds ``energy-kwh`` and
``co2-g`` to the reply's metrics; the coordinator sums them into the round's
``energy_kwh`` and ``co2_g``. codecarbon is an optional dependency (``fedfleet[energy]``):
a site that enables it without the package gets an error reply naming the fix, before
any training. Only two numbers per round leave the site.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import Context, Error, Message, MetricRecord
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode

from edge_client.protocol import keys as k
from edge_client.protocol.site import NC_SITE_CONFIG
from edge_client.site_config import EnergySettings, SiteConfig

log = logging.getLogger(__name__)


def measured(settings: EnergySettings, run: ClientAppCallable) -> ClientAppCallable:
    """``run`` wrapped so its reply carries the energy and CO2 codecarbon measured."""

    def call(message: Message, context: Context) -> Message:
        from codecarbon import OfflineEmissionsTracker

        tracker = OfflineEmissionsTracker(
            country_iso_code=settings.country_iso_code,
            save_to_file=False,
            log_level="error",
            tracking_mode="process",
        )
        tracker.start()
        try:
            reply = run(message, context)
        finally:
            tracker.stop()
        data = tracker.final_emissions_data
        if reply.has_error():
            return reply
        record = reply.content.metric_records.get(k.METRICS)
        if record is None:
            record = MetricRecord()
            reply.content[k.METRICS] = record
        record[k.ENERGY_KWH] = float(data.energy_consumed)
        record[k.CO2_G] = float(data.emissions) * 1000.0
        return reply

    return call


def energy_mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower mod: measure train instructions when the site's ``[energy]`` says so."""
    config_path = context.node_config.get(NC_SITE_CONFIG)
    if not config_path or message.metadata.message_type != "train":  # plain training only
        return call_next(message, context)
    settings = SiteConfig.load(Path(str(config_path))).energy
    if not settings.codecarbon:
        return call_next(message, context)
    try:
        import codecarbon  # noqa: F401
    except ImportError:
        return Message(
            Error(
                ErrorCode.MOD_FAILED_PRECONDITION,
                "[energy] codecarbon = true but codecarbon is not installed; "
                "pip install 'fedfleet[energy]' or set codecarbon = false",
            ),
            reply_to=message,
        )
    return measured(settings, call_next)(message, context)
