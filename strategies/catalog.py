"""The registered strategies: Flower's implementations configured, FedBuff added.

Each factory maps :class:`StrategyParams` onto a Flower ``flwr.serverapp.strategy``
class. The FedAvg family (fedavg, fedprox, fedavgm, fedadam, fedyogi, fedadagrad)
averages with the streaming kernel (``strategies/streaming.py``). Robust aggregators
are Flower's, flagged ``needs_individual_updates`` (they cannot run on a secure sum)
and with the fewest updates their guarantees need:

- Krum / Multi-Krum (Blanchard et al., NeurIPS 2017): n ≥ 2f + 3.
- Bulyan (El Mhamdi et al., ICML 2018): n ≥ 4f + 3.
- Coordinate-wise median and trimmed mean (Yin et al., ICML 2018).

q-FFL (Li, Sanjabi, Beirami & Smith, "Fair Resource Allocation in Federated Learning",
ICLR 2020) is Flower's ``QFedAvg``: it weighs each client's update by its training loss
to the power ``q``, narrowing the accuracy gap between clients (and so between groups
that clients over-represent). It needs each client's update and loss, so it is flagged
``needs_individual_updates`` too.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from strategies.registry import StrategyParams, register_strategy

if TYPE_CHECKING:
    from flwr.serverapp.strategy import Strategy

# Flower is imported when a strategy is built, not when one is named: validating
# `fedfleet simulate --strategy NAME` must not pay for it (tests/test_cli_startup.py).


def _flower() -> Any:
    from flwr.serverapp import strategy

    return strategy


def _streaming(name: str) -> Any:
    from strategies.streaming import with_streaming_average

    return with_streaming_average(getattr(_flower(), name))


# Sampling is done by the round loop: the strategy takes every node of the view it gets.
ALL_OF_VIEW: dict[str, Any] = {
    "fraction_train": 1.0,
    "fraction_evaluate": 1.0,
    "min_train_nodes": 1,
    "min_evaluate_nodes": 1,
    "min_available_nodes": 1,
}


def krum_min_updates(params: StrategyParams) -> int:
    """Krum's guarantee needs n > 2f + 2 (Blanchard et al. 2017, Prop. 1)."""
    return 2 * params.byzantine + 3


def bulyan_min_updates(params: StrategyParams) -> int:
    """Bulyan needs n ≥ 4f + 3 (El Mhamdi et al. 2018, §4)."""
    return 4 * params.byzantine + 3


def _lr(params: StrategyParams, default: float) -> float:
    return default if params.server_lr is None else params.server_lr


@register_strategy("fedavg", summary="FedAvg (McMahan et al. 2017): weighted mean of updates")
def _fedavg(params: StrategyParams) -> Strategy:
    return _streaming("FedAvg")(**ALL_OF_VIEW)


@register_strategy("fedprox", summary="FedProx (Li et al. 2020): FedAvg + client proximal term")
def _fedprox(params: StrategyParams) -> Strategy:
    return _streaming("FedProx")(proximal_mu=params.proximal_mu, **ALL_OF_VIEW)


@register_strategy("fedavgm", summary="FedAvgM (Hsu et al. 2019): server momentum")
def _fedavgm(params: StrategyParams) -> Strategy:
    return _streaming("FedAvgM")(
        server_learning_rate=_lr(params, 1.0),
        server_momentum=params.server_momentum,
        **ALL_OF_VIEW,
    )


@register_strategy("fedadam", summary="FedAdam (Reddi et al. 2021): Adam on the server")
def _fedadam(params: StrategyParams) -> Strategy:
    return _streaming("FedAdam")(
        eta=_lr(params, 0.1),
        beta_1=params.beta_1,
        beta_2=params.beta_2,
        tau=params.tau,
        **ALL_OF_VIEW,
    )


@register_strategy("fedyogi", summary="FedYogi (Reddi et al. 2021): Yogi on the server")
def _fedyogi(params: StrategyParams) -> Strategy:
    return _streaming("FedYogi")(
        eta=_lr(params, 0.01),
        beta_1=params.beta_1,
        beta_2=params.beta_2,
        tau=params.tau,
        **ALL_OF_VIEW,
    )


@register_strategy("fedadagrad", summary="FedAdagrad (Reddi et al. 2021): Adagrad on the server")
def _fedadagrad(params: StrategyParams) -> Strategy:
    return _streaming("FedAdagrad")(eta=_lr(params, 0.1), tau=params.tau, **ALL_OF_VIEW)


@register_strategy(
    "fedmedian",
    needs_individual_updates=True,
    summary="coordinate-wise median (Yin et al. 2018)",
)
def _fedmedian(params: StrategyParams) -> Strategy:
    return _flower().FedMedian(**ALL_OF_VIEW)


@register_strategy(
    "trimmed-mean",
    needs_individual_updates=True,
    summary="coordinate-wise trimmed mean (Yin et al. 2018); trims trim-fraction per side",
)
def _trimmed_mean(params: StrategyParams) -> Strategy:
    return _flower().FedTrimmedAvg(beta=params.trim_fraction, **ALL_OF_VIEW)


@register_strategy(
    "krum",
    needs_individual_updates=True,
    min_updates=krum_min_updates,
    summary="Krum (Blanchard et al. 2017): the update closest to its n-f-2 neighbours",
)
def _krum(params: StrategyParams) -> Strategy:
    return _flower().Krum(num_malicious_nodes=params.byzantine, **ALL_OF_VIEW)


@register_strategy(
    "multikrum",
    needs_individual_updates=True,
    min_updates=krum_min_updates,
    summary="Multi-Krum (Blanchard et al. 2017): mean of the m best Krum scores",
)
def _multikrum(params: StrategyParams) -> Strategy:
    return _multikrum_n_minus_f()(
        num_malicious_nodes=params.byzantine, select=params.krum_select, **ALL_OF_VIEW
    )


@register_strategy(
    "bulyan",
    needs_individual_updates=True,
    min_updates=bulyan_min_updates,
    summary="Bulyan (El Mhamdi et al. 2018): Krum selection, then trimmed median",
)
def _bulyan(params: StrategyParams) -> Strategy:
    return _flower().Bulyan(num_malicious_nodes=params.byzantine, **ALL_OF_VIEW)


# The MetricRecord key of a client's training loss (edge_client.protocol.keys.TRAIN_LOSS;
# strategies/ may not import the device side: tests/strategies/test_qffl.py checks they agree).
TRAIN_LOSS_KEY = "train-loss"


@register_strategy(
    "qffl",
    needs_individual_updates=True,
    summary="q-FFL (Li et al. 2020): updates weighed by loss^q, for a fairer accuracy spread",
)
def _qffl(params: StrategyParams) -> Strategy:
    if params.client_lr is None:
        raise ValueError("qffl needs the clients' learning rate: set strategy-client-lr")
    return _flower().QFedAvg(
        client_learning_rate=params.client_lr,
        q=params.q,
        train_loss_key=TRAIN_LOSS_KEY,
        **ALL_OF_VIEW,
    )


@register_strategy(
    "fedbuff",
    asynchronous=True,
    summary="FedBuff (Nguyen et al. 2022): buffered asynchronous, staleness-weighted",
)
def _fedbuff(params: StrategyParams) -> Strategy:
    from strategies.fedbuff import FedBuff

    return FedBuff(
        server_lr=_lr(params, 1.0),
        staleness_exponent=params.staleness_exponent,
        max_staleness=params.max_staleness,
        **ALL_OF_VIEW,
    )


@functools.cache
def _multikrum_n_minus_f() -> Any:
    """The MultiKrum subclass below, defined when first built (it needs Flower)."""

    class _MultiKrumNMinusF(_flower().MultiKrum):  # type: ignore[misc]
        """Flower's MultiKrum selecting ``m = n − f`` updates each round (Blanchard et al.'s
        choice) unless ``select`` fixes ``m``; Flower's own default keeps only one."""

        def __init__(self, *, select: int | None, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._select = select

        def aggregate_train(self, server_round: int, replies: Any) -> Any:
            replies = list(replies)
            usable = sum(1 for m in replies if not m.has_error())
            self.num_nodes_to_select = self._select or max(1, usable - self.num_malicious_nodes)
            return super().aggregate_train(server_round, replies)

    return _MultiKrumNMinusF
