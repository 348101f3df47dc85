"""The typed differential-privacy configuration of a run, and its validation.

One object, built at the boundary (run config, simulate flags, site config) and
validated once with messages that name the value to change. The modes:

* ``local`` — sample-level DP-SGD at each site (Opacus); every site's ledger enforces
  its own budget. ``epsilon`` is the per-site target over the whole run (the noise is
  calibrated to reach it after ``num-server-rounds`` trainings) unless
  ``noise_multiplier`` is given, in which case ``epsilon`` is only the per-site budget.
* ``central`` — client-level DP-FedAvg: the coordinator clips each update and adds
  Gaussian noise to the average (a trusted coordinator).
* ``distributed`` — client-level DP without a trusted coordinator: every client clips
  and adds its share of the noise before secure aggregation masks its update.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

from privacy.dp.accounting import Accountant, Mechanism, calibrate_noise, check_accountant

DPMode = Literal["none", "local", "central", "distributed"]
DP_MODES: tuple[str, ...] = get_args(DPMode)
Clipping = Literal["fixed", "adaptive"]
CLIPPINGS: tuple[str, ...] = get_args(Clipping)
# Opacus per-sample-gradient modes that support Poisson sampling's empty batches
# (torch's expanded weights, "ew", refuses a batch of size 0).
OpacusMode = Literal["hooks", "functorch", "ghost"]
OPACUS_MODES: tuple[str, ...] = get_args(OpacusMode)
# "fused": fedfleet's own per-sample clipping (privacy/dp/fused.py) for models made of
# Linear/Conv2d layers only, the same mechanism as Opacus's; other models use Opacus.
TrainingMode = Literal["fused", "hooks", "functorch", "ghost"]
TRAINING_MODES: tuple[str, ...] = get_args(TrainingMode)
# "auto": the fastest mode measured for the task's model (edge_client/dp_modes.py).
GradSampleMode = Literal["auto", "fused", "hooks", "functorch", "ghost"]
GRAD_SAMPLE_MODES: tuple[str, ...] = get_args(GradSampleMode)

# Run-config keys of a run's DP switches (same names as `fedfleet simulate` flags),
# read by :meth:`DPConfig.from_run_config` at the coordinator and at every client.
RC_DP: Final = "dp"  # none | local | central | distributed
RC_DP_EPSILON: Final = "dp-epsilon"  # target ε (absent: noise multiplier given)
RC_DP_DELTA: Final = "dp-delta"
RC_DP_CLIP: Final = "dp-clip"  # max grad norm (local) / update clip norm (client-level)
RC_DP_NOISE_MULTIPLIER: Final = "dp-noise-multiplier"  # absent: calibrated from ε
RC_DP_CLIPPING: Final = "dp-clipping"  # fixed | adaptive (central only)
RC_DP_ACCOUNTANT: Final = "dp-accountant"  # rdp | prv
RC_DP_MIN_CLIENTS: Final = "dp-min-clients"  # distributed: surviving clients assumed
RC_DP_GRAD_SAMPLE_MODE: Final = "dp-grad-sample-mode"  # auto|fused|hooks|functorch|ghost

#: Strategies whose aggregate is a (weighted) mean of client models: the only ones whose
#: sensitivity client-level DP can bound (robust aggregators and server optimisers are not).
AVERAGING_STRATEGIES: tuple[str, ...] = ("fedavg", "fedprox")


@dataclass(frozen=True)
class DPConfig:
    """Differential-privacy settings of one run.

    ``epsilon``/``delta``: the (ε, δ) target — per site for ``local``, per client for
    ``central``/``distributed``. ``clip``: Opacus's ``max_grad_norm`` (per-sample gradient
    L2 norm, ``local``) or the L2 norm bound of one client's model update (the initial
    bound when ``clipping="adaptive"``). ``noise_multiplier``: noise standard deviation
    over ``clip``; ``None`` means "calibrate it from ``epsilon``". ``min_clients``:
    the number of clients assumed to survive every round (``distributed`` only).
    ``target_quantile``/``clip_learning_rate``: adaptive clipping (Andrew et al., 2021).
    """

    mode: DPMode = "none"
    epsilon: float | None = None
    delta: float = 1e-5
    clip: float = 1.0
    noise_multiplier: float | None = None
    clipping: Clipping = "fixed"
    accountant: Accountant = "rdp"
    min_clients: int | None = None
    # The fastest Opacus mode measured per task model (bench/dp.py, edge_client/dp_modes.py).
    grad_sample_mode: GradSampleMode = "auto"
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    @property
    def client_level(self) -> bool:
        """Client-level DP (the coordinator's accountant applies)."""
        return self.mode in ("central", "distributed")

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> DPConfig:
        """The run's ``dp*`` run-config keys (others are ignored), validated without
        dataset sizes; the coordinator and every client read them with this one parser."""
        min_clients = run_config_float(run_config, RC_DP_MIN_CLIENTS)
        delta = run_config_float(run_config, RC_DP_DELTA)
        clip = run_config_float(run_config, RC_DP_CLIP)
        config = cls(
            mode=dp_mode(run_config),  # type: ignore[arg-type]
            epsilon=run_config_float(run_config, RC_DP_EPSILON),
            delta=cls.delta if delta is None else delta,
            clip=cls.clip if clip is None else clip,
            noise_multiplier=run_config_float(run_config, RC_DP_NOISE_MULTIPLIER),
            clipping=str(run_config.get(RC_DP_CLIPPING, "fixed")),  # type: ignore[arg-type]
            accountant=str(run_config.get(RC_DP_ACCOUNTANT, "rdp")),  # type: ignore[arg-type]
            min_clients=int(min_clients) if min_clients else None,
            grad_sample_mode=str(  # type: ignore[arg-type]
                run_config.get(RC_DP_GRAD_SAMPLE_MODE, cls.grad_sample_mode)
            ),
        )
        config.validate()
        return config

    def as_run_config(self) -> dict[str, bool | int | float | str]:
        """The run-config keys of this configuration (inverse of :meth:`from_run_config`)."""
        if not self.enabled:
            return {RC_DP: "none"}
        out: dict[str, bool | int | float | str] = {
            RC_DP: self.mode,
            RC_DP_DELTA: self.delta,
            RC_DP_CLIP: self.clip,
            RC_DP_CLIPPING: self.clipping,
            RC_DP_ACCOUNTANT: self.accountant,
            RC_DP_GRAD_SAMPLE_MODE: self.grad_sample_mode,
        }
        if self.epsilon is not None:
            out[RC_DP_EPSILON] = self.epsilon
        if self.noise_multiplier is not None:
            out[RC_DP_NOISE_MULTIPLIER] = self.noise_multiplier
        if self.min_clients is not None:
            out[RC_DP_MIN_CLIENTS] = self.min_clients
        return out

    def validate(self, *, dataset_size: int | None = None) -> None:
        """Refuse meaningless settings, naming the value to change.

        ``dataset_size`` is N of the δ < 1/N rule: the smallest site's number of training
        records for ``local``, the number of clients for ``central``/``distributed``.
        """
        if self.mode not in DP_MODES:
            raise ValueError(f"unknown dp mode {self.mode!r}; choose one of: {', '.join(DP_MODES)}")
        if not self.enabled:
            if self.epsilon is not None or self.noise_multiplier is not None:
                raise ValueError(
                    "an epsilon or noise multiplier was given but dp is 'none'; "
                    "add --dp local|central|distributed"
                )
            return
        self._check_noise()
        self._check_delta(dataset_size)
        self._check_clipping()
        self._check_training()

    def _check_noise(self) -> None:
        """ε or the noise multiplier: exactly one for client-level DP, each positive."""
        if self.epsilon is not None and not (self.epsilon > 0 and math.isfinite(self.epsilon)):
            raise ValueError(
                f"dp epsilon {self.epsilon} must be a positive number (e.g. --epsilon 2)"
            )
        if self.noise_multiplier is not None and not (
            self.noise_multiplier > 0 and math.isfinite(self.noise_multiplier)
        ):
            raise ValueError(
                f"noise multiplier {self.noise_multiplier} gives no privacy with dp on; "
                "use a positive --noise-multiplier (e.g. 1.0) or give --epsilon instead"
            )
        if self.epsilon is None and self.noise_multiplier is None:
            raise ValueError(
                f"dp={self.mode} needs --epsilon E (noise calibrated to it) or --noise-multiplier Z"
            )
        if self.client_level and self.epsilon is not None and self.noise_multiplier is not None:
            raise ValueError(
                f"dp={self.mode}: give either --epsilon (noise calibrated to it) or "
                "--noise-multiplier, not both"
            )

    def _check_delta(self, dataset_size: int | None) -> None:
        """δ in (0, 1), and below 1/N when N is known."""
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"dp delta {self.delta} must be in (0, 1), e.g. --delta 1e-5")
        if dataset_size is not None and self.delta >= 1.0 / max(dataset_size, 1):
            unit = "records at the smallest site" if self.mode == "local" else "clients"
            raise ValueError(
                f"dp delta {self.delta:g} is not below 1/N = 1/{dataset_size} "
                f"(N = {dataset_size} {unit}); a δ that large allows releasing a whole "
                f"record — choose --delta well below {1.0 / max(dataset_size, 1):.3g}"
            )

    def _check_clipping(self) -> None:
        """A positive clipping norm; adaptive clipping only where it is implemented."""
        if not (self.clip > 0 and math.isfinite(self.clip)):
            raise ValueError(f"dp clipping norm {self.clip} must be a positive number (--clip)")
        if self.clipping not in CLIPPINGS:
            raise ValueError(f"unknown dp clipping {self.clipping!r}; choose fixed or adaptive")
        if self.clipping == "adaptive" and self.mode != "central":
            raise ValueError(
                f"adaptive clipping works only with dp=central (got dp={self.mode}); "
                "use dp-clipping=fixed"
            )

    def _check_training(self) -> None:
        """The accountant, Opacus's mode, the surviving clients and adaptive clipping's rates."""
        check_accountant(self.accountant)
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ValueError(
                f"unknown grad-sample mode {self.grad_sample_mode!r}; choose one of: "
                + ", ".join(GRAD_SAMPLE_MODES)
            )
        if self.min_clients is not None and self.min_clients < 1:
            raise ValueError(f"dp-min-clients {self.min_clients} must be >= 1")
        if not 0.0 <= self.target_quantile <= 1.0:
            raise ValueError(f"dp target quantile {self.target_quantile} must be in [0, 1]")
        if not self.clip_learning_rate > 0:
            raise ValueError(f"dp clip learning rate {self.clip_learning_rate} must be > 0")


def dp_mode(run_config: Mapping[str, Any]) -> str:
    """The run's DP mode (``none`` when the key is absent or empty)."""
    value = str(run_config.get(RC_DP, "none")).strip().lower()
    return value or "none"


def run_config_float(config: Mapping[str, Any], key: str) -> float | None:
    """``config[key]`` as a float (``None`` when absent), or a ``ValueError`` naming it."""
    if key not in config:
        return None
    value = config[key]
    if isinstance(value, bool):
        raise ValueError(f"run config {key}={value!r} must be a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"run config {key}={value!r} must be a number") from None


def client_sampling_rate(*, clients_per_round: int, num_clients: int) -> float:
    """The per-round client sampling rate ``m / N`` used by the client-level accountant.

    The round loop samples a fixed number ``m`` of clients without replacement; the
    accountant treats it as Poisson sampling with rate ``m / N``, as DP-FedAvg's analysis
    does (McMahan et al. 2018) — exact when ``m = N``, an approximation otherwise
    (see ``docs/privacy.md``).
    """
    if not 1 <= clients_per_round <= num_clients:
        raise ValueError("clients per round must be between 1 and the number of clients")
    return clients_per_round / num_clients


def client_level_noise_multiplier(
    config: DPConfig, *, clients_per_round: int, num_clients: int, rounds: int
) -> float:
    """The noise multiplier of client-level DP: the one given, or the one calibrated so
    that ``rounds`` rounds at rate ``m / N`` spend ``config.epsilon`` at ``config.delta``.
    Deterministic, so the coordinator and every client compute the same value."""
    if config.noise_multiplier is not None:
        return config.noise_multiplier
    if config.epsilon is None:
        raise ValueError("client-level DP needs an epsilon or a noise multiplier")
    return calibrate_noise(
        target_epsilon=config.epsilon,
        delta=config.delta,
        sample_rate=client_sampling_rate(
            clients_per_round=clients_per_round, num_clients=num_clients
        ),
        steps=rounds,
        accountant=config.accountant,
    )


def local_mechanism(
    config: DPConfig, *, num_examples: int, batch_size: int, local_epochs: int, rounds: int
) -> Mechanism:
    """What one DP-SGD training at a site costs: Opacus's Poisson sampling draws each
    record with rate ``1 / ceil(n / batch_size)`` for ``ceil(n / batch_size)`` steps an
    epoch. The noise is given, or calibrated so ``rounds`` such trainings reach ε."""
    if num_examples < 1:
        raise ValueError("a site with no training records cannot train")
    if batch_size < 1 or local_epochs < 1 or rounds < 1:
        raise ValueError("batch size, local epochs and rounds must be >= 1")
    batches = -(-num_examples // batch_size)
    sample_rate = 1.0 / batches
    steps = local_epochs * batches
    if config.noise_multiplier is not None:
        sigma = config.noise_multiplier
    elif config.epsilon is not None:
        sigma = calibrate_noise(
            target_epsilon=config.epsilon,
            delta=config.delta,
            sample_rate=sample_rate,
            steps=steps * rounds,
            accountant=config.accountant,
        )
    else:
        raise ValueError("dp=local needs an epsilon or a noise multiplier")
    return Mechanism(sample_rate=sample_rate, noise_multiplier=sigma, steps=steps)
