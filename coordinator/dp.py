"""The coordinator's side of differential privacy, plugged into the round loop.

:func:`configure_dp` takes the loop ``build_loop`` assembled and, from the run
config's ``dp*`` keys (read by ``DPConfig.from_run_config``, the same parser the clients
use), adds:

* ``dp = "central"`` — client-level DP-FedAvg with a trusted coordinator (McMahan et
  al., ICLR 2018): Flower's Message-API wrappers
  ``DifferentialPrivacyServerSideFixedClipping`` / ``...AdaptiveClipping`` (Andrew et
  al., "Differentially Private Learning with Adaptive Clipping", NeurIPS 2021) clip each
  update to ``C`` and add ``N(0, (z C / m)²)`` to the average, around the run's strategy,
  which is made to weight clients uniformly (a weighted mean has no per-client bound);
* ``dp = "distributed"`` — the clients clip and add noise shares before secure
  aggregation masks them (``edge_client.dp_mods``); the coordinator only checks that
  every applied sum holds at least ``n_min`` clients;
* for every DP mode, an accountant reply filter writing ``epsilon`` into the round's
  metrics (client-level: composition of the rounds at rate ``m / N``; local: the
  largest ε any site reported), and a count of the sites that refused (``dp_refused``).

Combinations that cannot give the promised guarantee are refused before round 1
(:func:`coordinator.privacy_checks.check_dp_setup`, which loads no Flower).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from coordinator.config import RunConfig
from coordinator.loop import RoundLoop, TrainExchange, represented_clients
from coordinator.privacy_checks import check_dp_setup, distributed_noise_multiplier
from edge_client.protocol import keys as k
from privacy.dp import DPConfig, Mechanism, client_sampling_rate, epsilon

log = logging.getLogger(__name__)


class UniformWeights(Strategy):
    """Makes ``inner`` weight every reply equally (sets its weighting metric to 1).

    Client-level DP bounds each client's share of the average by ``C / m``; a
    num-examples weighted mean would give a large client more."""

    def __init__(self, inner: Strategy, *, weight_key: str = k.NUM_EXAMPLES) -> None:
        super().__init__()
        self.inner = inner
        self.weight_key = weight_key

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        for reply in replies:
            for record in reply.content.metric_records.values():
                if self.weight_key in record:
                    record[self.weight_key] = 1
        return self.inner.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.inner.summary()


def central_strategy(strategy: Strategy, dp: DPConfig, config: RunConfig) -> Strategy:
    """``strategy`` wrapped in Flower's server-side DP wrapper (fixed or adaptive)."""
    from flwr.serverapp.strategy import (
        DifferentialPrivacyServerSideAdaptiveClipping,
        DifferentialPrivacyServerSideFixedClipping,
    )

    sigma = distributed_noise_multiplier(dp, config)
    m = config.clients_per_round
    inner = UniformWeights(
        strategy, weight_key=getattr(strategy, "weighted_by_key", k.NUM_EXAMPLES)
    )
    if dp.clipping == "adaptive":
        # Flower splits σ between the update and the clipped-count query (Andrew et al.
        # Thm 1) and needs σ < 2 σ_b; σ_b = max(m/20, σ) keeps the split well-defined.
        return DifferentialPrivacyServerSideAdaptiveClipping(
            inner,
            noise_multiplier=sigma,
            num_sampled_clients=m,
            initial_clipping_norm=dp.clip,
            target_clipped_quantile=dp.target_quantile,
            clip_norm_lr=dp.clip_learning_rate,
            clipped_count_stddev=max(m / 20.0, sigma),
        )
    return DifferentialPrivacyServerSideFixedClipping(
        inner, noise_multiplier=sigma, clipping_norm=dp.clip, num_sampled_clients=m
    )


@dataclass
class RefusalCountingExchange:
    """Wraps a train exchange; counts the round's replies refused by a site's privacy
    policy (``Error.code == ERROR_DP_REFUSED``) before the loop drops error replies."""

    inner: TrainExchange
    refused: dict[int, int] = field(default_factory=dict)

    @property
    def in_flight(self) -> int:
        return int(getattr(self.inner, "in_flight", 0))

    def exchange(
        self, grid: Grid, messages: Iterable[Message], *, server_round: int, timeout: float
    ) -> list[Message]:
        replies = self.inner.exchange(grid, messages, server_round=server_round, timeout=timeout)
        self.refused[server_round] = sum(
            1 for m in replies if m.has_error() and m.error.code == k.ERROR_DP_REFUSED
        )
        return replies


@dataclass
class DPAccountant:
    """Reply filter: ``epsilon`` (and ``dp_refused``) into each round's metrics.

    Client-level modes compose one subsampled-Gaussian release per applied round at
    rate ``m / N``. With fewer replies ``n`` than ``m``, central DP's noise (scaled for
    ``m``) protects the mean of ``n`` less: the round counts with ``z n / m``.
    Distributed DP drops a round whose sum holds fewer than ``n_min`` clients (its noise
    would fall short). Local DP reports the largest ε any site has reported.
    """

    dp: DPConfig
    config: RunConfig
    refusals: RefusalCountingExchange | None = None
    min_clients: int = 1
    history: list[Mechanism] = field(default_factory=list)
    local_max: float = 0.0
    local_seen: bool = False
    sigma: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        if self.dp.client_level:
            self.sigma = distributed_noise_multiplier(self.dp, self.config)

    def __call__(
        self, server_round: int, replies: list[Message]
    ) -> tuple[list[Message], dict[str, float]]:
        stats: dict[str, float] = {}
        if self.refusals is not None:
            stats["dp_refused"] = float(self.refusals.refused.pop(server_round, 0))
        contributors = sum(represented_clients(m) for m in replies)
        if self.dp.mode == "local":
            # Sites report their ε in the reply's metrics; under secure aggregation the
            # coordinator sees no per-site metrics, and reports none rather than 0.
            for reply in replies:
                for record in reply.content.metric_records.values():
                    value = record.get(k.DP_EPSILON)
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        self.local_max = max(self.local_max, float(value))
                        self.local_seen = True
            if self.local_seen:
                stats["epsilon"] = self.local_max
            return replies, stats
        rate = client_sampling_rate(
            clients_per_round=self.config.clients_per_round, num_clients=self.config.num_clients
        )
        if self.dp.mode == "distributed":
            n_min = self.dp.min_clients or self.config.clients_per_round
            if 0 < contributors < n_min:
                log.warning(
                    "round %d: the secure sum holds %d clients, fewer than dp-min-clients=%d; "
                    "its noise falls short of the target, so it is not applied",
                    server_round,
                    contributors,
                    n_min,
                )
                stats["dp_short_of_noise"] = 1.0
                replies = []
            elif contributors >= max(n_min, self.min_clients):
                self.history.append(Mechanism(rate, self.sigma, 1))
        elif contributors >= self.min_clients:
            m = self.config.clients_per_round
            self.history.append(Mechanism(rate, self.sigma * min(1.0, contributors / m), 1))
        stats["epsilon"] = epsilon(self.history, delta=self.dp.delta, accountant=self.dp.accountant)
        stats["dp_noise_multiplier"] = self.sigma
        return replies, stats


def configure_dp(loop: RoundLoop, config: RunConfig, run_config: Mapping[str, Any]) -> RoundLoop:
    """Add the run's DP (see the module docstring) to ``loop``; refuse bad set-ups."""
    dp = DPConfig.from_run_config(run_config)
    if not dp.enabled:
        return loop
    check_dp_setup(dp, config, run_config)
    if dp.mode == "central":
        loop.strategy = central_strategy(loop.strategy, dp, config)
    refusals = RefusalCountingExchange(loop.exchange)
    loop.exchange = refusals
    accountant = DPAccountant(dp=dp, config=config, refusals=refusals, min_clients=loop.min_clients)
    loop.reply_filters.append(accountant)
    if dp.client_level:
        log.info(
            "dp=%s: noise multiplier %.4g, clip %g, %d rounds at client rate %.4g → target ε=%s",
            dp.mode,
            accountant.sigma,
            dp.clip,
            config.num_server_rounds,
            config.clients_per_round / config.num_clients,
            "n/a" if dp.epsilon is None else f"{dp.epsilon:g}",
        )
    else:
        log.info("dp=local: each site trains with DP-SGD and enforces its own budget")
    return loop
