"""Sample-level DP-SGD at a site (``dp = "local"``), with a hard privacy budget.

:func:`train_with_dp` is what ``handle_train`` runs when the run config says
``dp = "local"``:

1. plan the training's mechanism (Poisson sample rate ``1/ceil(n/B)``, steps, noise —
   given, or calibrated so the run's rounds reach the run's ε; ``privacy.dp``);
2. ``check_and_reserve`` it in the site's ledger BEFORE touching the data: a request
   that would exceed the budget is refused with an error reply the coordinator records
   (and a ``refused`` ledger row) — never a crash, never a training;
3. train with DP-SGD (per-sample clipping to ``max_grad_norm``, Gaussian noise, Poisson
   sampling — Abadi et al., "Deep Learning with Differential Privacy", CCS 2016) in the
   mode measured fastest for the task's model (``edge_client.dp_modes``,
   ``bench/dp.py --modes``): ``fused`` (``privacy.dp.fused``: Opacus's mechanism with
   ghost norms, no per-sample gradient of a linear layer stored) for models made of
   ``Linear``/``Conv2d`` layers, else Opacus 1.6's ``PrivacyEngine`` in one of its
   modes (hooks, functorch, ghost clipping — Li et al., ICLR 2022);
4. mark the reservation completed (or aborted when training failed, so nothing left).

Randomness: the Poisson sampler and the noise use generators seeded from
``secrets`` — never from the run seed, which the coordinator knows — in every mode
(``fused`` draws from the very same two generators Opacus would). A DP run is
therefore not bit-reproducible; that is the point. The ledger accounts the mechanism
``(q, σ, steps)`` it reserved; every mode runs exactly that mechanism, and
:func:`train_with_dp` checks the trained rate and steps against the reservation.
"""

from __future__ import annotations

import logging
import math
import secrets
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Error, Message, MetricRecord, RecordDict
from torch import nn

from edge_client.data import ClientData
from edge_client.dp_modes import fused_fallback, resolve_grad_sample_mode
from edge_client.dp_settings import LedgerSettings, ledger_settings
from edge_client.protocol import keys as k
from edge_client.settings import ClientSettings
from privacy.dp import DPConfig, local_mechanism
from privacy.dp.accounting import Mechanism
from privacy.dp.config import OpacusMode, TrainingMode
from privacy.dp.fused import (
    FusedClipper,
    gaussian_noise,
    poisson_batch,
    sample_rate,
    steps_per_epoch,
    supported_layers,
)
from privacy.dp.fused import expected_batch_size as expected_batch_size
from privacy.ledger import PrivacyLedger
from tasks import reported_loss

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DPTrainResult:
    """What a DP-SGD training produced. ``loss`` is the mean loss of the last epoch's
    non-empty batches; ``steps`` counts optimizer steps (empty Poisson batches too)."""

    num_examples: int
    loss: float
    steps: int
    sample_rate: float
    noise_multiplier: float


def make_dp_compatible(model: nn.Module) -> nn.Module:
    """``model`` itself if Opacus can train it, else Opacus's fix (BatchNorm → GroupNorm,
    ...) with a logged message saying what was replaced."""
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(model, strict=False)
    if not errors:
        return model
    names = sorted({type(e).__name__ + ": " + str(e).split(".")[0] for e in errors})
    log.warning(
        "DP-SGD: Opacus cannot train this model as is (%s); replacing the offending "
        "layers with ModuleValidator.fix (BatchNorm becomes GroupNorm)",
        "; ".join(names),
    )
    return ModuleValidator.fix(model)


def _secret_generator() -> torch.Generator:
    return torch.Generator().manual_seed(secrets.randbits(63))


# A simulator may train many clients' DP-SGD together with the same semantics
# (simulation/batched_dp.py). It installs a replacement for the current execution
# context only; everywhere else ``train_dp_local`` runs Opacus as written.
TrainDPFn = Callable[..., DPTrainResult]
_TRAIN_DP_OVERRIDE: ContextVar[TrainDPFn | None] = ContextVar(
    "fedfleet_train_dp_override", default=None
)


@contextmanager
def train_dp_local_override(fn: TrainDPFn) -> Iterator[None]:
    """Route ``train_dp_local`` calls made in this context to ``fn`` (same signature,
    with the generators already drawn: ``sample_generator``/``noise_generator``)."""
    token = _TRAIN_DP_OVERRIDE.set(fn)
    try:
        yield
    finally:
        _TRAIN_DP_OVERRIDE.reset(token)


def train_dp_local(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    noise_multiplier: float,
    max_grad_norm: float,
    grad_sample_mode: TrainingMode = "ghost",
    proximal_mu: float = 0.0,
    momentum: float = 0.0,
    sample_generator: torch.Generator | None = None,
    noise_generator: torch.Generator | None = None,
) -> DPTrainResult:
    """Train ``model`` in place with DP-SGD (Opacus ``PrivacyEngine``, Poisson sampling).

    The per-step sample rate is ``1 / ceil(n / batch_size)`` (Opacus's ``DPDataLoader``);
    ``noise_multiplier`` is the noise std over ``max_grad_norm`` (the per-sample
    gradient L2 bound). A FedProx term (``proximal_mu``) is applied as a
    data-independent step after each noisy update, so it costs no privacy; so does SGD
    ``momentum``, which only combines the noisy gradients already released.
    ``model`` must already be DP-compatible (:func:`make_dp_compatible`).
    ``grad_sample_mode="fused"`` runs :mod:`privacy.dp.fused` when every parameter of
    the model is in a supported layer, else Opacus's ghost clipping (logged once).
    ``sample_generator``/``noise_generator``: the Poisson sampler's and the noise's
    torch generators; None (always, outside tests) seeds each from ``secrets``.
    """
    n = len(x)
    if n == 0:
        raise ValueError("DP-SGD needs at least one training record")
    if not noise_multiplier > 0:
        raise ValueError(f"noise multiplier {noise_multiplier} must be > 0 for DP-SGD")
    sample_generator = sample_generator or _secret_generator()
    noise_generator = noise_generator or _secret_generator()
    override = _TRAIN_DP_OVERRIDE.get()
    if override is not None:
        return override(
            model,
            x,
            y,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            grad_sample_mode=grad_sample_mode,
            proximal_mu=proximal_mu,
            momentum=momentum,
            sample_generator=sample_generator,
            noise_generator=noise_generator,
        )
    mode: OpacusMode
    if grad_sample_mode == "fused":
        clipper = _fused_clipper(model, x)
        if isinstance(clipper, FusedClipper):
            return _train_fused(
                model,
                clipper,
                x,
                y,
                epochs=epochs,
                batch_size=batch_size,
                learning_rate=learning_rate,
                noise_multiplier=noise_multiplier,
                max_grad_norm=max_grad_norm,
                proximal_mu=proximal_mu,
                momentum=momentum,
                sample_generator=sample_generator,
                noise_generator=noise_generator,
            )
        # Opacus's ghost clipping refuses a layer used twice; hooks sums its terms.
        mode = fused_fallback(model, "ghost") if clipper is None else clipper
    else:
        mode = grad_sample_mode
    return _train_opacus(
        model,
        x,
        y,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        grad_sample_mode=mode,
        proximal_mu=proximal_mu,
        momentum=momentum,
        sample_generator=sample_generator,
        noise_generator=noise_generator,
    )


def _fused_clipper(model: nn.Module, x: np.ndarray) -> FusedClipper | OpacusMode | None:
    """The fused clipping step for ``model``; None when ``model`` has layers it does
    not train (only Linear/Conv2d), the Opacus mode to run when a forward pass calls a
    layer more than once (logged)."""
    layers = supported_layers(model)
    if layers is None:
        return None
    clipper = FusedClipper(model, layers)
    one = torch.from_numpy(np.ascontiguousarray(x[:1]))
    if clipper.calls_each_layer_once(one):
        return clipper
    return fused_fallback(model, "hooks", "calls a layer more than once a forward pass")


def _train_fused(
    model: nn.Module,
    clipper: FusedClipper,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    noise_multiplier: float,
    max_grad_norm: float,
    proximal_mu: float,
    momentum: float,
    sample_generator: torch.Generator,
    noise_generator: torch.Generator,
) -> DPTrainResult:
    """:func:`train_dp_local` with :mod:`privacy.dp.fused`: Opacus's sampling, clipping,
    noise and scaling, then ``torch.optim.SGD``'s step and FedProx's, as
    :func:`_train_opacus` runs them."""
    n = len(x)
    xs = torch.from_numpy(np.ascontiguousarray(x))
    ys = torch.from_numpy(np.ascontiguousarray(y)).long()
    rate = sample_rate(n, batch_size)
    per_epoch = steps_per_epoch(rate)
    scale = float(expected_batch_size(n, batch_size))
    std = noise_multiplier * max_grad_norm
    named = list(model.named_parameters())
    global_params = [p.detach().clone() for _, p in named] if proximal_mu > 0 else None
    optimizer = torch.optim.SGD([p for _, p in named], lr=learning_rate, momentum=momentum)
    model.train()
    loss_sum, loss_count = 0.0, 0
    for step in range(epochs * per_epoch):
        index = poisson_batch(sample_generator, n, rate, epoch_start=step % per_epoch == 0)
        summed: dict[str, torch.Tensor] = {}
        if len(index):
            summed, losses = clipper.clipped_sum(xs[index], ys[index], max_grad_norm)
            if step >= (epochs - 1) * per_epoch:
                loss_sum += float(losses.sum())
                loss_count += len(index)
        with torch.no_grad():
            for name, p in named:  # model.parameters() order, as DPOptimizer.add_noise
                noise = gaussian_noise(p.shape, std, noise_generator)
                p.grad = ((summed[name] + noise) if summed else noise) / scale
        optimizer.step()
        if global_params is not None:
            with torch.no_grad():
                for (_, p), g in zip(named, global_params, strict=True):
                    p.sub_(learning_rate * proximal_mu * (p - g))
    optimizer.zero_grad(set_to_none=True)
    return DPTrainResult(
        num_examples=n,
        loss=loss_sum / loss_count if loss_count else float("nan"),
        steps=epochs * per_epoch,
        sample_rate=rate,
        noise_multiplier=noise_multiplier,
    )


def _train_opacus(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    noise_multiplier: float,
    max_grad_norm: float,
    grad_sample_mode: OpacusMode,
    proximal_mu: float,
    momentum: float,
    sample_generator: torch.Generator,
    noise_generator: torch.Generator,
) -> DPTrainResult:
    """:func:`train_dp_local` with Opacus's ``PrivacyEngine`` (arguments checked)."""
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    n = len(x)
    dataset = TensorDataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y))
    loader = DataLoader(dataset, batch_size=batch_size, generator=sample_generator)
    global_params = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=momentum)
    model.train()
    with warnings.catch_warnings():
        # Opacus warns that secure_mode is off: its torchcsprng is unavailable here; the
        # generators are seeded from `secrets` instead (see the module docstring).
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        engine = PrivacyEngine(accountant="rdp", secure_mode=False)
        private = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            poisson_sampling=True,
            grad_sample_mode=grad_sample_mode,
            criterion=nn.CrossEntropyLoss(),
            noise_generator=noise_generator,
        )
        if grad_sample_mode == "ghost":
            dp_model, dp_optimizer, criterion, dp_loader = private
        else:
            dp_model, dp_optimizer, dp_loader = private
            criterion = nn.CrossEntropyLoss()
        steps = 0
        loss_sum, loss_count = 0.0, 0
        try:
            for epoch in range(epochs):
                last = epoch == epochs - 1
                for xb, yb in dp_loader:
                    dp_optimizer.zero_grad(set_to_none=True)
                    loss = criterion(dp_model(xb), yb)
                    loss.backward()
                    dp_optimizer.step()
                    steps += 1
                    if global_params is not None:
                        with torch.no_grad():
                            for p, g in zip(model.parameters(), global_params, strict=True):
                                p.sub_(learning_rate * proximal_mu * (p - g))
                    if last and len(xb) > 0:
                        loss_sum += float(loss.detach()) * len(xb)
                        loss_count += len(xb)
        finally:
            dp_optimizer.zero_grad(set_to_none=True)
            remove = getattr(dp_model, "_close", None)
            if callable(remove):
                remove()  # drop Opacus's hooks: the module goes back to the caller clean
    return DPTrainResult(
        num_examples=n,
        loss=loss_sum / loss_count if loss_count else float("nan"),
        steps=steps,
        sample_rate=float(dp_loader.sample_rate),  # type: ignore[attr-defined]
        noise_multiplier=noise_multiplier,
    )


def _refusal(message: Message, reason: str) -> Message:
    log.warning("refusing round: %s", reason)
    return Message(Error(code=k.ERROR_DP_REFUSED, reason=reason), reply_to=message)


def plan_dp_training(
    context: Context, *, settings: ClientSettings, num_examples: int, dp: DPConfig | None
) -> tuple[DPConfig, LedgerSettings, Mechanism]:
    """What one DP-SGD training of this round would be: the DP settings (the site's
    own, else the run's), the ledger and budget it is charged to, and its mechanism.
    The budget pre-flight (``edge_client.budget_query``) plans with this very function.

    Raises:
        ValueError, TypeError: the settings are invalid for this site (the reason).
    """
    if dp is None:
        dp = DPConfig.from_run_config(context.run_config)
    n = num_examples
    dp.validate(dataset_size=n)
    where = ledger_settings(
        node_config=context.node_config,
        run_config=context.run_config,
        dp=dp,
        partition_id=settings.partition_id,
    )
    if where.budget.delta >= 1.0 / max(n, 1):
        raise ValueError(
            f"the site's δ {where.budget.delta:g} is not below 1/n = 1/{n}; "
            "lower the budget's delta"
        )
    mechanism = local_mechanism(
        dp,
        num_examples=n,
        batch_size=settings.batch_size,
        local_epochs=settings.local_epochs,
        rounds=run_rounds(context),
    )
    return dp, where, mechanism


def run_rounds(context: Context) -> int:
    """The run's number of rounds (at least 1): how many trainings a site may be asked
    for, and what ``local_mechanism`` calibrates the noise over."""
    return max(int(context.run_config.get(k.RC_NUM_SERVER_ROUNDS, 1)), 1)


def train_with_dp(
    message: Message,
    context: Context,
    *,
    settings: ClientSettings,
    data: ClientData,
    model: nn.Module,
    dp: DPConfig | None = None,
) -> Message:
    """The ``dp = "local"`` train handler body: plan, reserve, train, commit, reply.

    ``dp``: the site's own DP-SGD settings (a site that requires DP); None reads the
    run config's."""
    try:
        dp, where, mechanism = plan_dp_training(
            context, settings=settings, num_examples=len(data.x_train), dp=dp
        )
    except (TypeError, ValueError) as exc:
        return _refusal(message, f"invalid DP configuration for this site: {exc}")
    received_keys = list(message.content.array_records[k.ARRAYS].keys())
    fixed = make_dp_compatible(model)
    if list(fixed.state_dict().keys()) != received_keys:
        return _refusal(
            message,
            "the task's model has layers DP-SGD cannot train (e.g. BatchNorm) and fixing "
            "them changes its parameters; build the task's model DP-compatible "
            "(Opacus ModuleValidator.fix) for every party",
        )
    ledger = PrivacyLedger(where.path, site=where.site)
    decision = ledger.check_and_reserve(
        task=settings.task,
        run_id=str(context.run_id),
        server_round=settings.server_round,
        mechanism=mechanism,
        budget=where.budget,
        accountant=where.accountant,
    )
    if not decision.granted:
        return _refusal(message, decision.reason)
    try:
        result = train_dp_local(
            fixed,
            data.x_train,
            data.y_train,
            epochs=settings.local_epochs,
            batch_size=settings.batch_size,
            learning_rate=settings.learning_rate,
            noise_multiplier=mechanism.noise_multiplier,
            max_grad_norm=dp.clip,
            grad_sample_mode=resolve_grad_sample_mode(
                dp.grad_sample_mode, task=settings.task, model=fixed
            ),
            proximal_mu=settings.proximal_mu,
            momentum=settings.momentum,
        )
        if not math.isclose(result.sample_rate, mechanism.sample_rate, rel_tol=1e-9):
            raise RuntimeError(
                f"Opacus sampled at rate {result.sample_rate}, the ledger reserved "
                f"{mechanism.sample_rate}"
            )
        # Every Poisson step is a step of the mechanism, empty batches included.
        if result.steps != mechanism.steps:
            raise RuntimeError(f"trained {result.steps} steps, reserved {mechanism.steps}")
    except BaseException as exc:
        ledger.abort(decision.entry_id, reason=f"{type(exc).__name__}: {exc}")
        raise
    ledger.commit(decision.entry_id)
    remaining = decision.remaining
    log.info(
        "DP-SGD round %d of task %s: σ=%.3f q=%.4f steps=%d; ε spent %.3f%s (δ=%g)",
        settings.server_round,
        settings.task,
        mechanism.noise_multiplier,
        mechanism.sample_rate,
        mechanism.steps,
        decision.epsilon_after,
        f", ε left {remaining:.3f}" if remaining is not None else "",
        where.budget.delta,
    )
    metrics = MetricRecord(
        {
            k.NUM_EXAMPLES: result.num_examples,
            k.TRAIN_LOSS: reported_loss(result.num_examples, result.loss),
            k.DP_EPSILON: decision.epsilon_after,
            k.DP_NOISE_MULTIPLIER: mechanism.noise_multiplier,
            k.DP_SAMPLE_RATE: mechanism.sample_rate,
            k.DP_STEPS: mechanism.steps,
        }
    )
    content = RecordDict({k.ARRAYS: ArrayRecord(fixed.state_dict()), k.METRICS: metrics})
    return Message(content=content, reply_to=message)
