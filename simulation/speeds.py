"""Simulated device speeds: how many seconds a client takes to train and upload.

A minimal heavy-tailed model, enough for asynchronous rounds and deadlines to matter
in simulation (device profiles from ``simulation/devices`` can replace it behind the
same function, :func:`client_seconds`). Measurements of real cross-device fleets show
heavy-tailed client latencies (Bonawitz et al., MLSys 2019; Nguyen et al., AISTATS
2022 model them with a half-normal/log-normal mix); here:

    seconds = (num_examples · local_epochs · SECONDS_PER_SAMPLE + UPLOAD_SECONDS)
              · slowdown(client) · jitter(client, round)

``slowdown`` is fixed per client: ``1 + Lomax(α)`` for ``pareto:α`` (smaller α, heavier
tail; α ≤ 2 has infinite variance), ``exp(N(0, σ²))`` for ``lognormal:σ``, 1 for
``uniform``. ``jitter`` is ``exp(N(0, 0.1²))`` per round. Everything is a function of
(seed, client, round), so every engine reproduces it.

:func:`speed_mod` is a Flower ClientApp mod: it adds the seconds to each train reply's
metrics under ``sim-seconds``, which the coordinator reads when the run's clock is
``simulated``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from edge_client.protocol import keys as k

if TYPE_CHECKING:  # Flower loads when a run uses the speeds, not when they are validated
    from flwr.app import Context, Message
    from flwr.clientapp.typing import ClientAppCallable

SECONDS_PER_SAMPLE = 0.01  # reference device, one sample, one epoch
UPLOAD_SECONDS = 1.0  # reference device, one model upload
JITTER_SIGMA = 0.1

SpeedKind = Literal["uniform", "pareto", "lognormal"]


@dataclass(frozen=True)
class SpeedSpec:
    """A parsed ``--speeds`` value: ``uniform``, ``pareto:ALPHA`` or ``lognormal:SIGMA``."""

    kind: SpeedKind
    param: float = 0.0

    @classmethod
    def parse(cls, text: str) -> SpeedSpec:
        name, _, arg = text.strip().partition(":")
        if name == "uniform" and not arg:
            return cls("uniform")
        if name in ("pareto", "lognormal"):
            try:
                value = float(arg)
            except ValueError:
                value = math.nan
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(
                    f"speeds {text!r}: {name} needs a positive number, e.g. {name}:1.5"
                )
            return cls(name, value)  # type: ignore[arg-type]
        raise ValueError(f"unknown speeds {text!r}; use uniform, pareto:ALPHA or lognormal:SIGMA")

    def __str__(self) -> str:
        return self.kind if self.kind == "uniform" else f"{self.kind}:{self.param:g}"


def slowdown(spec: SpeedSpec, *, client: int, seed: int) -> float:
    """The client's fixed slowdown factor (>= 1 for pareto; median 1 for lognormal)."""
    rng = np.random.default_rng([seed, client, 0x5BEED])
    if spec.kind == "pareto":
        return 1.0 + float(rng.pareto(spec.param))
    if spec.kind == "lognormal":
        return float(np.exp(rng.normal(0.0, spec.param)))
    return 1.0


def client_seconds(
    spec: SpeedSpec,
    *,
    client: int,
    num_examples: int,
    local_epochs: int,
    server_round: int,
    seed: int,
) -> float:
    """Simulated seconds for ``client`` to train ``local_epochs`` over
    ``num_examples`` samples and upload its update in ``server_round``."""
    work = num_examples * local_epochs * SECONDS_PER_SAMPLE + UPLOAD_SECONDS
    rng = np.random.default_rng([seed, client, server_round, 0x717E])
    jitter = float(np.exp(rng.normal(0.0, JITTER_SIGMA)))
    return work * slowdown(spec, client=client, seed=seed) * jitter


def speed_mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """ClientApp mod: report the simulated seconds of a train reply (``sim-seconds``)
    when the run config names a speed model (``speeds``)."""
    reply = call_next(message, context)
    text = str(context.run_config.get(k.RC_SPEEDS, "") or "")
    if not text or reply.has_error() or not message.metadata.message_type.startswith("train"):
        return reply
    spec = SpeedSpec.parse(text)
    metrics = reply.content.metric_records.get(k.METRICS)
    if metrics is None:
        return reply
    config = message.content.config_records.get(k.CONFIG)
    epochs = int(config.get(k.LOCAL_EPOCHS, 1)) if config is not None else 1  # type: ignore[arg-type]
    server_round = int(config.get(k.SERVER_ROUND, 0)) if config is not None else 0  # type: ignore[arg-type]
    metrics[k.SIM_SECONDS] = client_seconds(
        spec,
        client=int(context.node_config.get(k.NC_PARTITION_ID, context.node_id)),  # type: ignore[arg-type]
        num_examples=int(metrics.get(k.NUM_EXAMPLES, 0)),  # type: ignore[arg-type]
        local_epochs=epochs,
        server_round=server_round,
        seed=int(context.run_config.get(k.RC_SEED, 0)),  # type: ignore[arg-type]
    )
    from flwr.app import MetricRecord

    reply.content.metric_records[k.METRICS] = MetricRecord(dict(metrics))
    return reply
