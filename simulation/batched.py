"""Many clients' local training as one batched computation, with ``train_local``'s arithmetic.

``tasks.train_local`` trains one model with plain minibatch SGD in a seeded batch order
(``tasks.training.batch_order``). :func:`train_batched` trains a list of such jobs —
one per client of a round — together: it stacks the clients' parameters and takes each
SGD step for all of them at once (``torch.func.vmap`` of ``functional_call`` over the
stacked parameters — the model-ensembling recipe of the ``torch.func`` documentation —
and one ``autograd.grad`` for all clients). Every client keeps its own batch order,
learning rate, momentum, epochs, proximal term and data size:

- at step ``s`` only clients with an ``s``-th minibatch take part; they are grouped by
  minibatch size (the last minibatch of an epoch is smaller), so there is no padding
  and no client ever sees another's samples;
- the loss of a step is the mean cross-entropy of that client's minibatch (plus
  ``mu/2 · ||w − w_global||²`` for FedProx), exactly the expression ``train_local``
  differentiates, and the update is the same ``p ← p − lr · g`` as ``torch.optim.SGD``
  (with momentum ``m``: ``b ← m · b + g``, ``p ← p − lr · b``, the buffer ``b``
  starting at zero — ``torch.optim.SGD``'s first step sets ``b = g``, the same value);
- the reported loss is the last epoch's example-weighted mean, accumulated in the same
  order and precision as ``train_local``.

The results equal one-by-one training up to float32 rounding of batched kernels (tests
assert it). Models the batched path cannot reproduce exactly — randomness in the forward
pass (dropout), running statistics (batch norm), buffers — are trained one by one with
the real ``train_local``. The batched path also avoids building a ``torch.optim``
optimizer per client.
"""

from __future__ import annotations

import contextvars
import math
import os
import weakref
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from tasks import TrainResult
from tasks.training import batch_order, train_local

# Modules whose training-mode forward pass draws random numbers or updates state: a
# batched forward pass would not reproduce them, so such models train one by one. So do
# recurrent layers: torch.func.vmap has no batching rule for aten::lstm (torch 2.13).
_STATEFUL_OR_RANDOM: tuple[type[nn.Module], ...] = (
    nn.modules.dropout._DropoutNd,
    nn.modules.batchnorm._NormBase,
    nn.AlphaDropout,
    nn.RNNBase,
)


# The memory one batched training may take for its stacks (parameters, gradients,
# momentum and proximal copies, gathered slices, activations), in MiB; a larger group
# is trained in consecutive chunks that fit. ``FEDFLEET_BATCH_MEMORY_MIB`` overrides it.
DEFAULT_BATCH_MEMORY_MIB = 128
BATCH_MEMORY_ENV = "FEDFLEET_BATCH_MEMORY_MIB"


@dataclass
class _ModelWalk:
    """What a model's module walk gives, found once per model object: its named
    parameters and its submodules. A simulated client's model comes from
    ``tasks.model_pool`` and is reused round after round, so walking its module tree
    for every job (``named_parameters``, ``modules``) was a per-client cost of every
    round. :func:`_walk` walks again a model whose structure changed since: a
    parameter or submodule of any of its modules added, removed or replaced."""

    named: list[tuple[str, nn.Parameter]]
    children: list[nn.Module]  # submodules, the model itself excluded (a weak key's
    # value must not refer to its key)
    # per module (the model, then ``children``): ids of its direct submodules and
    # parameters. The objects stay alive through ``named``/``children``, so an id
    # seen here cannot be reused by a newer object.
    shape: list[tuple[tuple[int, ...], tuple[int, ...]]]

    @staticmethod
    def of(module: nn.Module) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Ids of ``module``'s direct submodules and of its own parameters."""
        return tuple(map(id, module._modules.values())), tuple(map(id, module._parameters.values()))

    def current(self, model: nn.Module) -> bool:
        """Whether ``model``'s modules still hold exactly these submodules and parameters."""
        of = self.of
        return of(model) == self.shape[0] and all(
            of(m) == seen for m, seen in zip(self.children, self.shape[1:], strict=True)
        )


_WALKS: weakref.WeakKeyDictionary[nn.Module, _ModelWalk] = weakref.WeakKeyDictionary()


def _walk(model: nn.Module) -> _ModelWalk:
    """``model``'s named parameters and submodules, cached per model object."""
    walk = _WALKS.get(model)
    if walk is not None and walk.current(model):
        return walk
    children = [m for m in model.modules() if m is not model]
    shape = [_ModelWalk.of(m) for m in (model, *children)]
    walk = _ModelWalk(list(model.named_parameters()), children, shape)
    _WALKS[model] = walk
    return walk


def batch_memory_bytes() -> int:
    """The memory budget of one batched training (``FEDFLEET_BATCH_MEMORY_MIB``)."""
    text = os.environ.get(BATCH_MEMORY_ENV, "").strip()
    if not text:
        return DEFAULT_BATCH_MEMORY_MIB * 1024**2
    try:
        mib = float(text)
    except ValueError:
        mib = -1.0
    if not mib > 0:
        raise ValueError(
            f"{BATCH_MEMORY_ENV}={text!r}: give the batched-training memory budget in MiB "
            f"(a number > 0, e.g. {DEFAULT_BATCH_MEMORY_MIB})"
        )
    return int(mib * 1024**2)


def chunk_size(job: TrainJob, budget_bytes: int) -> int:
    """How many clients like ``job`` one batched step may stack within ``budget_bytes``.

    Per client: its parameters about six times over (the stack, its gradient, the
    momentum buffer, the proximal copy, the gathered copy of a partial step and the
    update) plus the activations of one minibatch kept for the backward pass (each
    module's output, counted on one sample, three times: the value, its gradient and
    a temporary). At least one client.
    """
    param_bytes = sum(p.numel() * p.element_size() for p in job.model.parameters())
    per_client = 6 * param_bytes + 3 * job.batch_size * _activation_bytes(job)
    return max(1, budget_bytes // max(1, per_client))


def _activation_bytes(job: TrainJob) -> int:
    """Bytes of every leaf module's output for one sample of ``job`` (a forward pass)."""
    total = 0

    def count(_module: nn.Module, _inputs: Any, output: Any) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    leaves = [m for m in job.model.modules() if next(m.children(), None) is None]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            job.model(torch.from_numpy(np.ascontiguousarray(job.x[:1])))
    finally:
        for hook in hooks:
            hook.remove()
    return total


@dataclass
class TrainJob:
    """One client's ``train_local`` call: the same arguments, captured."""

    model: nn.Module
    x: np.ndarray
    y: np.ndarray
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    proximal_mu: float = 0.0
    momentum: float = 0.0


def batchable(model: nn.Module) -> bool:
    """Whether the batched path reproduces ``train_local`` for this model exactly."""
    if any(isinstance(m, _STATEFUL_OR_RANDOM) for m in model.modules()):
        return False
    if any(True for _ in model.buffers()):
        return False
    params = list(model.parameters())
    return bool(params) and all(p.dtype == torch.float32 and p.requires_grad for p in params)


def train_one_by_one(job: TrainJob) -> TrainResult:
    """The reference: the real ``train_local``, outside any simulator override."""
    return contextvars.Context().run(
        train_local,
        job.model,
        job.x,
        job.y,
        epochs=job.epochs,
        batch_size=job.batch_size,
        learning_rate=job.learning_rate,
        seed=job.seed,
        proximal_mu=job.proximal_mu,
        momentum=job.momentum,
    )


def train_batched(
    jobs: Sequence[TrainJob], *, memory_bytes: int | None = None
) -> list[TrainResult]:
    """Train every job's model in place; results in the order of ``jobs``.

    Jobs are grouped by model architecture (class and parameter shapes) and minibatch
    size; each group is trained as stacks of at most :func:`chunk_size` clients for the
    memory budget ``memory_bytes`` (default :func:`batch_memory_bytes`): consecutive
    chunks, one after the other. Clients never interact, so the chunks give the same
    results as one stack. Jobs with no data return what ``train_local`` returns (0
    examples). An architecture that :func:`batchable` refuses (checked on its first
    model) is trained one by one.
    """
    budget = batch_memory_bytes() if memory_bytes is None else memory_bytes
    results: list[TrainResult | None] = [None] * len(jobs)
    groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    named: dict[int, list[tuple[str, nn.Parameter]]] = {}
    verdicts: dict[tuple[Any, ...], bool] = {}
    for i, job in enumerate(jobs):
        _check(job)
        if len(job.x) == 0:
            results[i] = TrainResult(num_examples=0, loss=float("nan"), steps=0)
            continue
        params = _walk(job.model).named
        key = (type(job.model), tuple((n, tuple(p.shape)) for n, p in params), job.batch_size)
        verdict = verdicts.get(key)
        if verdict is None:
            verdict = verdicts[key] = batchable(job.model)
        if verdict:
            named[i] = params
            groups[key].append(i)
        else:
            results[i] = train_one_by_one(job)
    for members in groups.values():
        if len(members) == 1:
            results[members[0]] = train_one_by_one(jobs[members[0]])
            continue
        size = chunk_size(jobs[members[0]], budget)
        for start in range(0, len(members), size):
            chunk = members[start : start + size]
            trained = _train_group([jobs[i] for i in chunk], [named[i] for i in chunk])
            for i, result in zip(chunk, trained, strict=True):
                results[i] = result
    return [r for r in results if r is not None]


def _check(job: TrainJob) -> None:
    if job.epochs < 1 or job.batch_size < 1:
        raise ValueError("epochs and batch_size must be >= 1")
    if len(job.x) != len(job.y):
        raise ValueError("x and y must have the same number of samples")


LossFn = Callable[..., torch.Tensor]


def _loss_fn(template: nn.Module, mu: float) -> LossFn:
    """One client's loss as a function of its parameters: the expression
    ``train_local`` differentiates. Cross-entropy is written as the mean negative
    log-likelihood of ``log_softmax`` (what ``nn.CrossEntropyLoss`` computes) because
    ``nll_loss`` has no batching rule: under ``vmap`` it would fall back to a Python
    decomposition, slower and importing sympy on first use."""

    def loss(
        params: dict[str, torch.Tensor],
        global_params: dict[str, torch.Tensor] | None,
        x: torch.Tensor,
        y: torch.Tensor,
    ) -> torch.Tensor:
        logits = torch.func.functional_call(template, params, (x,))
        log_p = torch.log_softmax(logits, dim=-1)
        value = -log_p.gather(-1, y.unsqueeze(-1)).mean()
        if global_params is not None:
            prox = sum(((params[name] - global_params[name]) ** 2).sum() for name in params)
            value = value + 0.5 * mu * prox
        return value

    return loss


def _client_losses(
    template: nn.Module,
    mu: float,
    params: dict[str, torch.Tensor],
    global_params: dict[str, torch.Tensor] | None,
    x: torch.Tensor,
    y: torch.Tensor,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Each client's loss and gradient, all clients at once.

    The forward pass is ``vmap``-ed over the stacked parameters; the gradients come
    from one ``autograd.grad`` of the *sum* of the clients' losses: client ``c``'s loss
    depends only on its own slice of the stack, so its slice of the gradient is exactly
    its own gradient (the sum's backward multiplies by 1). This avoids ``torch.func.grad``,
    whose first call imports ``torch._dynamo`` (seconds of cold start).
    """
    leaves = {name: value.detach().requires_grad_(True) for name, value in params.items()}
    in_dims = (0, 0 if global_params is not None else None, 0, 0)
    losses = torch.func.vmap(_loss_fn(template, mu), in_dims=in_dims)(leaves, global_params, x, y)
    grads = torch.autograd.grad(losses.sum(), list(leaves.values()))
    return dict(zip(leaves, grads, strict=True)), losses.detach()


@dataclass
class _Group:
    """One group's training state: the stacked parameters and each client's minibatches."""

    template: nn.Module  # the architecture every client's parameters are plugged into
    names: list[str]  # parameter names, in ``named_parameters`` order
    stacked: dict[str, torch.Tensor]  # each parameter, clients along dimension 0
    initial: dict[str, torch.Tensor]  # ``stacked`` before training (FedProx only, else {})
    velocity: dict[str, torch.Tensor]  # momentum buffers, zero at the start (else {})
    xs: list[torch.Tensor]
    ys: list[torch.Tensor]
    orders: list[list[np.ndarray]]  # each client's minibatches, as ``train_local`` visits them
    per_epoch: list[int]  # minibatches per epoch
    steps: list[int]  # minibatches in all
    last_epoch_loss: list[float]  # example-weighted loss sum of the last epoch


def _train_group(
    jobs: list[TrainJob], named: list[list[tuple[str, nn.Parameter]]]
) -> list[TrainResult]:
    """Train jobs whose models share one architecture and minibatch size."""
    own_params = [[p for _, p in params] for params in named]
    group = _start_group(jobs, named, own_params)
    for step in range(max(group.steps)):
        for (_, lr, mu, m), members in _cohorts(jobs, group.orders, step).items():
            _cohort_step(
                group, members, step, lr=lr, mu=mu, momentum=m, everyone=len(members) == len(jobs)
            )
    with torch.no_grad():
        for j, name in enumerate(group.names):
            for own, value in zip(own_params, group.stacked[name].unbind(0), strict=True):
                own[j].copy_(value)
    return [
        TrainResult(
            num_examples=len(job.x),
            loss=group.last_epoch_loss[c] / len(job.x),
            steps=group.steps[c],
        )
        for c, job in enumerate(jobs)
    ]


def _start_group(
    jobs: list[TrainJob],
    named: list[list[tuple[str, nn.Parameter]]],
    own_params: list[list[nn.Parameter]],
) -> _Group:
    """The models in training mode, their parameters stacked, each client's batch order."""
    template = jobs[0].model
    names = [name for name, _ in named[0]]
    for job in jobs:  # train_local's model.train(), skipped where it changes nothing
        model = job.model
        if not (model.training and all(m.training for m in _walk(model).children)):
            model.train()
    with torch.no_grad():
        stacked = {
            name: torch.stack([params[j].detach() for params in own_params])
            for j, name in enumerate(names)
        }
    proximal = any(job.proximal_mu > 0 for job in jobs)
    initial = {name: value.clone() for name, value in stacked.items()} if proximal else {}
    heavy_ball = any(job.momentum > 0 for job in jobs)
    velocity = {name: torch.zeros_like(v) for name, v in stacked.items()} if heavy_ball else {}
    orders = [
        batch_order(len(job.x), batch_size=job.batch_size, epochs=job.epochs, seed=job.seed)
        for job in jobs
    ]
    return _Group(
        template=template,
        names=names,
        stacked=stacked,
        initial=initial,
        velocity=velocity,
        xs=[torch.from_numpy(np.ascontiguousarray(job.x)) for job in jobs],
        ys=[torch.from_numpy(np.ascontiguousarray(job.y)) for job in jobs],
        orders=orders,
        per_epoch=[math.ceil(len(job.x) / job.batch_size) for job in jobs],
        steps=[len(order) for order in orders],
        last_epoch_loss=[0.0] * len(jobs),
    )


def _cohorts(
    jobs: list[TrainJob], orders: list[list[np.ndarray]], step: int
) -> dict[tuple[int, float, float, float], list[int]]:
    """Clients taking a step now, grouped so each group stacks equal shapes:
    (minibatch size, learning rate, proximal mu, momentum) -> client indices."""
    cohorts: dict[tuple[int, float, float, float], list[int]] = defaultdict(list)
    for c, order in enumerate(orders):
        if step < len(order):
            job = jobs[c]
            key = (len(order[step]), job.learning_rate, job.proximal_mu, job.momentum)
            cohorts[key].append(c)
    return cohorts


def _cohort_step(
    group: _Group,
    members: list[int],
    step: int,
    *,
    lr: float,
    mu: float,
    momentum: float,
    everyone: bool,
) -> None:
    """One SGD step for the clients ``members`` (all of the group when ``everyone``)."""
    stacked = group.stacked
    index = torch.tensor(members)
    params = stacked if everyone else {n: v[index] for n, v in stacked.items()}
    global_params = None
    if mu > 0:
        global_params = (
            group.initial if everyone else {n: v[index] for n, v in group.initial.items()}
        )
    x = torch.stack([group.xs[c][torch.from_numpy(group.orders[c][step])] for c in members])
    y = torch.stack([group.ys[c][torch.from_numpy(group.orders[c][step])] for c in members])
    grads, losses = _client_losses(group.template, mu, params, global_params, x, y)
    velocity = group.velocity
    if momentum > 0 and not everyone:
        velocity = {n: v[index] for n, v in group.velocity.items()}
    with torch.no_grad():
        # p ← p − lr·g in place (the same kernel as torch.add; no fresh
        # allocation of the whole stack every step). ``params`` is ``stacked``
        # itself, or a gathered copy written back; the same for the momentum buffers.
        for n in group.names:
            step_dir = grads[n]
            if momentum > 0:  # torch.optim.SGD: b ← m·b + g, then p ← p − lr·b
                step_dir = velocity[n].mul_(momentum).add_(grads[n])
                if not everyone:
                    group.velocity[n].index_copy_(0, index, step_dir)
            params[n].add_(step_dir, alpha=-lr)
            if not everyone:
                stacked[n].index_copy_(0, index, params[n])
    batch = x.shape[1]
    for c, value in zip(members, losses.tolist(), strict=True):
        if step >= group.steps[c] - group.per_epoch[c]:
            group.last_epoch_loss[c] += float(value) * batch
