"""Measured energy and CO2 of a site's training, with codecarbon (optional).

With ``[energy] codecarbon = true`` in site.toml, :func:`energy_mod` runs each train
instruction inside codecarbon's ``OfflineEmissionsTracker`` (no network: the grid
intensity is codecarbon's own average for ``country-iso-code``; power from RAPL, the
GPU's NVML or, failing those, codecarbon's CPU TDP table). codecarbon is an optional
dependency (``fedfleet[energy]``): a site that enables it without the package gets an
error reply naming the fix, before any training.

What leaves the site, per round, is two numbers:

* a plain ``train``: ``energy-kwh`` and ``co2-g`` in the reply's metrics, in clear; the
  coordinator knows them per site;
* secure aggregation (SecAgg+): every stage message of the round is measured (setup,
  share, masked train, unmask); the energy of the stages up to the masked train's
  encoding travels INSIDE the masked input (``privacy.secagg.energy_slots``), so the
  coordinator learns only the survivors' sum. What is spent after that point (masking,
  the unmask stage) is carried into the site's next masked input; the last round's
  carry never leaves the site.

Either way the site's audit log records, per reply, what it delivered
(``"energy": {"kwh", "co2_g", "how": "clear" | "masked"}``).
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode

from edge_client.protocol import keys as k
from edge_client.protocol.site import NC_SITE_CONFIG
from edge_client.site_config import EnergySettings, SiteConfig
from privacy.secagg import energy_slots
from privacy.secagg.energy_slots import EnergySum

log = logging.getLogger(__name__)

SECAGG_STAGES = frozenset(
    {"query.secagg_setup", "query.secagg_share", "train.secagg", "query.secagg_unmask"}
)
PENDING = "energy-pending"  # context.state: measured, not yet delivered (kwh, co2-g)
SENT = "energy-sent"  # context.state: what the last reply delivered, for the audit log


class Tracker(Protocol):
    """What :class:`Meter` uses of codecarbon's ``OfflineEmissionsTracker``."""

    def start(self) -> None: ...
    def stop(self) -> Any: ...

    @property
    def final_emissions_data(self) -> Any: ...


def codecarbon_tracker(settings: EnergySettings) -> Tracker:
    from codecarbon import OfflineEmissionsTracker

    tracker: Tracker = OfflineEmissionsTracker(
        country_iso_code=settings.country_iso_code,
        save_to_file=False,
        log_level="error",
        tracking_mode="process",
    )
    return tracker


TRACKER: Callable[[EnergySettings], Tracker] = codecarbon_tracker
"""Makes a tracker (tests put a fake one here)."""


@dataclass(frozen=True)
class Reading:
    """Energy (kWh) and CO2 (g) measured over some span."""

    kwh: float = 0.0
    co2_g: float = 0.0

    def __add__(self, other: Reading) -> Reading:
        return Reading(self.kwh + other.kwh, self.co2_g + other.co2_g)


class Meter:
    """One tracker at a time; :meth:`split` reads what was spent so far and goes on."""

    def __init__(self, settings: EnergySettings) -> None:
        self.settings = settings
        self._tracker: Tracker | None = None

    def start(self) -> None:
        self._tracker = TRACKER(self.settings)
        self._tracker.start()

    def stop(self) -> Reading:
        tracker, self._tracker = self._tracker, None
        if tracker is None:
            return Reading()
        tracker.stop()
        data = tracker.final_emissions_data
        return Reading(float(data.energy_consumed), float(data.emissions) * 1000.0)

    def split(self) -> Reading:
        reading = self.stop()
        self.start()
        return reading


_ACTIVE: contextvars.ContextVar[Meter | None] = contextvars.ContextVar("energy_meter", default=None)


def _pending(context: Context) -> Reading:
    record = context.state.config_records.get(PENDING)
    if record is None:
        return Reading()
    return Reading(float(record["kwh"]), float(record["co2-g"]))  # type: ignore[arg-type]


def _set_pending(context: Context, reading: Reading) -> None:
    context.state.config_records[PENDING] = ConfigRecord(
        {"kwh": max(reading.kwh, 0.0), "co2-g": max(reading.co2_g, 0.0)}
    )


def _record_sent(context: Context, reading: Reading, how: str) -> None:
    context.state.config_records[SENT] = ConfigRecord(
        {"kwh": reading.kwh, "co2-g": reading.co2_g, "how": how}
    )


def sent_energy(context: Context) -> dict[str, Any] | None:
    """What the reply just made delivered (and forget it): the audit log's ``energy``."""
    record = context.state.config_records.pop(SENT, None)
    if record is None:
        return None
    return {"kwh": record["kwh"], "co2_g": record["co2-g"], "how": record["how"]}


def masked_energy(context: Context, *, max_weight: int) -> list[int]:
    """The energy slots of this site's masked input (``train.secagg``): everything
    measured since the last delivery, up to now. Zeros when the site does not measure."""
    meter = _ACTIVE.get()
    if meter is None:
        return energy_slots.encode(None, max_weight=max_weight)
    total = _pending(context) + meter.split()
    slots = energy_slots.encode(
        EnergySum(sites=1, energy_kwh=total.kwh, co2_g=total.co2_g), max_weight=max_weight
    )
    sent = energy_slots.decode(slots, max_weight=max_weight)
    delivered = Reading(sent.energy_kwh, sent.co2_g)
    _set_pending(context, Reading(total.kwh - delivered.kwh, total.co2_g - delivered.co2_g))
    _record_sent(context, delivered, "masked")
    return slots


def _in_clear(reply: Message, context: Context, reading: Reading) -> Message:
    record = reply.content.metric_records.get(k.METRICS)
    if record is None:
        record = MetricRecord()
        reply.content[k.METRICS] = record
    record[k.ENERGY_KWH] = reading.kwh
    record[k.CO2_G] = reading.co2_g
    _record_sent(context, reading, "clear")
    return reply


def measured(settings: EnergySettings, run: ClientAppCallable) -> ClientAppCallable:
    """``run`` measured: a plain train's reply carries its energy and CO2; a SecAgg+
    stage's energy waits in the node's state for the next masked input."""

    def call(message: Message, context: Context) -> Message:
        meter = Meter(settings)
        meter.start()
        token = _ACTIVE.set(meter)
        try:
            reply = run(message, context)
        finally:
            _ACTIVE.reset(token)
            reading = meter.stop()
        if message.metadata.message_type in SECAGG_STAGES:
            unsent = reading
            if reply.has_error() and (sent := sent_energy(context)) is not None:
                unsent = unsent + Reading(sent["kwh"], sent["co2_g"])  # it never left
            _set_pending(context, _pending(context) + unsent)
            return reply
        return reply if reply.has_error() else _in_clear(reply, context, reading)

    return call


def site_energy(context: Context) -> EnergySettings | None:
    """The site's ``[energy]`` settings when it measures (``codecarbon = true``)."""
    config_path = context.node_config.get(NC_SITE_CONFIG)
    if not config_path:
        return None
    settings = SiteConfig.load(Path(str(config_path))).energy
    return settings if settings.codecarbon else None


def energy_mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower mod: measure train instructions and SecAgg+ stages when ``[energy]`` says so."""
    kind = message.metadata.message_type
    if kind != "train" and kind not in SECAGG_STAGES:
        return call_next(message, context)
    settings = site_energy(context)
    if settings is None:
        return call_next(message, context)
    if TRACKER is codecarbon_tracker:
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
