"""Many clients' DP-SGD as one batched computation, with Opacus's semantics.

``edge_client.dp_training.train_dp_local`` trains one model with Opacus's
``PrivacyEngine`` (Abadi et al., CCS 2016). :func:`train_dp_batched` trains a round's
cohort of such jobs together, each client with exactly the mechanism Opacus runs:

- **Poisson sampling**: each step, client ``c`` takes every record with probability
  ``q = 1 / ceil(n / B)`` (``torch.rand(n, generator) < q``, Opacus's
  ``UniformWithReplacementSampler``, with the client's own sampler generator) for
  ``int(1 / q)`` steps an epoch; empty batches are steps too;
- **per-sample clipping** by the L2 norm over all parameters:
  ``g_i ← g_i · min(1, C / (‖g_i‖ + 1e-6))`` (``DPOptimizer.clip_and_accumulate``), where
  ``g_i`` is the gradient of sample ``i``'s cross-entropy;
- **Gaussian noise** of std ``σ · C`` on the sum, drawn per parameter in
  ``model.parameters()`` order from the client's own noise generator
  (``DPOptimizer.add_noise``), then division by Opacus's expected batch size
  ``int(n · q)`` (``loss_reduction="mean"``);
- the update is ``torch.optim.SGD``'s (heavy-ball momentum from a zero buffer), then
  FedProx's data-independent step ``p ← p − lr · μ · (p − p_global)``, as
  ``train_dp_local`` does.

With the same generators the result equals Opacus's to float rounding
(``tests/simulation/test_batched_dp.py`` checks it against ``PrivacyEngine``).

The mechanism's core (sampling, per-layer ghost norms, clipping, noise) is
:mod:`privacy.dp.fused`, which a site runs too (``dp-grad-sample-mode = "fused"``); this
module batches it over a cohort. How it is fast: one forward pass of all clients' padded batches (``vmap`` over the
stacked parameters), one backward pass to each layer's *output* (the gradient of the
summed per-sample losses there is each sample's own output gradient, since samples do
not mix), then per layer, from its inputs ``a`` and output gradients ``g``:
per-sample norms (for a linear layer ``‖g aᵀ‖ = ‖g‖ ‖a‖``, the ghost norm of Li et al.,
ICLR 2022; a convolution's per-sample gradient is small and is formed from the unfolded
input) and the clipped sum ``Σ_i w_i g_i a_iᵀ`` as one contraction. No per-sample
gradient of a linear layer is ever stored. Models with parameters outside ``Linear`` /
``Conv2d`` layers (or that :func:`simulation.batched.batchable` refuses) are trained one
by one with Opacus itself.
"""

from __future__ import annotations

import contextvars
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from edge_client.dp_training import DPTrainResult, train_dp_local
from privacy.dp.config import TrainingMode
from privacy.dp.fused import (
    FusedClipper,
    clip_weights,
    clipped_sums,
    expected_batch_size,
    gaussian_noise,
    layer_terms,
    poisson_batch,
    sample_rate,
    steps_per_epoch,
    supported_layers,
)
from simulation.batched import batchable


@dataclass
class DPTrainJob:
    """One client's ``train_dp_local`` call: the same arguments, generators drawn."""

    model: nn.Module
    x: np.ndarray
    y: np.ndarray
    epochs: int
    batch_size: int
    learning_rate: float
    noise_multiplier: float
    max_grad_norm: float
    sample_generator: torch.Generator
    noise_generator: torch.Generator
    grad_sample_mode: TrainingMode = "ghost"
    proximal_mu: float = 0.0
    momentum: float = 0.0


def train_dp_one_by_one(job: DPTrainJob) -> DPTrainResult:
    """The reference: Opacus's ``train_dp_local``, outside any simulator override."""
    return contextvars.Context().run(
        train_dp_local,
        job.model,
        job.x,
        job.y,
        epochs=job.epochs,
        batch_size=job.batch_size,
        learning_rate=job.learning_rate,
        noise_multiplier=job.noise_multiplier,
        max_grad_norm=job.max_grad_norm,
        grad_sample_mode=job.grad_sample_mode,
        proximal_mu=job.proximal_mu,
        momentum=job.momentum,
        sample_generator=job.sample_generator,
        noise_generator=job.noise_generator,
    )


def train_dp_batched(jobs: Sequence[DPTrainJob]) -> list[DPTrainResult]:
    """Train every job's model in place with DP-SGD; results in the order of ``jobs``.

    Jobs are grouped by model architecture; each group is trained as one stack. An
    architecture this module cannot batch is trained one by one with Opacus."""
    results: list[DPTrainResult | None] = [None] * len(jobs)
    groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for i, job in enumerate(jobs):
        _check(job)
        params = list(job.model.named_parameters())
        key = (type(job.model), tuple((n, tuple(p.shape)) for n, p in params))
        if key not in groups and not (batchable(job.model) and _fusable(job)):
            results[i] = train_dp_one_by_one(job)
            continue
        groups[key].append(i)
    for members in groups.values():
        trained = _DPGroup([jobs[i] for i in members]).train()
        for i, result in zip(members, trained, strict=True):
            results[i] = result
    return [r for r in results if r is not None]


def _fusable(job: DPTrainJob) -> bool:
    """Whether the fused step trains the job's model: only Linear/Conv2d parameters,
    each layer called once a forward pass (the taps hold one input per layer)."""
    layers = supported_layers(job.model)
    if layers is None:
        return False
    one = torch.from_numpy(np.ascontiguousarray(job.x[:1]))
    return FusedClipper(job.model, layers).calls_each_layer_once(one)


def _check(job: DPTrainJob) -> None:
    if job.epochs < 1 or job.batch_size < 1:
        raise ValueError("epochs and batch_size must be >= 1")
    if len(job.x) == 0 or len(job.x) != len(job.y):
        raise ValueError("DP-SGD needs at least one training record, as many labels as records")
    if job.noise_multiplier < 0 or not job.max_grad_norm > 0:
        raise ValueError("noise multiplier must be >= 0 and max_grad_norm > 0")


@dataclass
class _Taps:
    """Per-layer inputs seen and output probes added during one forward pass."""

    probes: list[torch.Tensor] = field(default_factory=list)
    inputs: dict[int, torch.Tensor] = field(default_factory=dict)


class _DPGroup:
    """Clients sharing one architecture: stacked parameters, per-client mechanism."""

    def __init__(self, jobs: list[DPTrainJob]) -> None:
        self.jobs = jobs
        self.template = jobs[0].model
        self.names = [n for n, _ in self.template.named_parameters()]
        layers = supported_layers(self.template)
        if layers is None:  # checked by the caller
            raise ValueError("model not batchable for DP-SGD")
        self.layers = layers
        self.own = [list(job.model.parameters()) for job in jobs]
        for job in jobs:
            job.model.train()
        with torch.no_grad():
            self.stacked = {
                n: torch.stack([own[j].detach() for own in self.own])
                for j, n in enumerate(self.names)
            }
        self.initial = (
            {n: v.clone() for n, v in self.stacked.items()}
            if any(j.proximal_mu > 0 for j in jobs)
            else {}
        )
        self.velocity = (
            {n: torch.zeros_like(v) for n, v in self.stacked.items()}
            if any(j.momentum > 0 for j in jobs)
            else {}
        )
        self.xs = [torch.from_numpy(np.ascontiguousarray(j.x)) for j in jobs]
        self.ys = [torch.from_numpy(np.ascontiguousarray(j.y)).long() for j in jobs]
        self.rates = [sample_rate(len(j.x), j.batch_size) for j in jobs]
        self.steps = [j.epochs * steps_per_epoch(q) for j, q in zip(jobs, self.rates, strict=True)]
        self.last_epoch_start = [
            s - steps_per_epoch(q) for s, q in zip(self.steps, self.rates, strict=True)
        ]
        self.ebs = [expected_batch_size(len(j.x), j.batch_size) for j in jobs]
        self.loss_sum = [0.0] * len(jobs)
        self.loss_count = [0] * len(jobs)
        self.taps = _Taps()
        self._shapes: list[tuple[int, ...]] | None = None

    def train(self) -> list[DPTrainResult]:
        handles = [
            module.register_forward_hook(self._hook(k)) for k, (_, module) in enumerate(self.layers)
        ]
        try:
            for step in range(max(self.steps)):
                members = [c for c, s in enumerate(self.steps) if step < s]
                self._step(members, step)
        finally:
            for handle in handles:
                handle.remove()
        with torch.no_grad():
            for j, name in enumerate(self.names):
                for own, value in zip(self.own, self.stacked[name].unbind(0), strict=True):
                    own[j].copy_(value)
        return [
            DPTrainResult(
                num_examples=len(job.x),
                loss=self.loss_sum[c] / self.loss_count[c] if self.loss_count[c] else float("nan"),
                steps=self.steps[c],
                sample_rate=self.rates[c],
                noise_multiplier=job.noise_multiplier,
            )
            for c, job in enumerate(self.jobs)
        ]

    def _hook(self, k: int):  # type: ignore[no-untyped-def]
        taps = self.taps

        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor):  # type: ignore[no-untyped-def]
            taps.inputs[k] = inputs[0].detach()
            return output + taps.probes[k] if taps.probes else output

        return hook

    def _sample(self, members: list[int], step: int) -> list[torch.Tensor]:
        """Each member's Poisson batch, from the client's own sampler generator."""
        return [
            poisson_batch(
                self.jobs[c].sample_generator,
                len(self.xs[c]),
                self.rates[c],
                epoch_start=step % steps_per_epoch(self.rates[c]) == 0,
            )
            for c in members
        ]

    def _step(self, members: list[int], step: int) -> None:
        batches = self._sample(members, step)
        everyone = len(members) == len(self.jobs)
        index = torch.tensor(members)
        params = self.stacked if everyone else {n: v[index] for n, v in self.stacked.items()}
        summed = {n: torch.zeros_like(v) for n, v in params.items()}
        for rows in _buckets([len(b) for b in batches]):
            if len(batches[rows[-1]]) == 0:
                continue  # empty Poisson batches: nothing to clip, noise only
            sub = torch.tensor(rows)
            part = self._clipped_sums(
                [members[r] for r in rows],
                [batches[r] for r in rows],
                {n: v[sub] for n, v in params.items()} if len(rows) < len(members) else params,
                step,
            )
            for n, value in part.items():
                if len(rows) < len(members):
                    summed[n].index_copy_(0, sub, value)
                else:
                    summed[n] = value
        self._update(members, index, everyone, params, summed)

    def _clipped_sums(
        self,
        members: list[int],
        batches: list[torch.Tensor],
        params: dict[str, torch.Tensor],
        step: int,
    ) -> dict[str, torch.Tensor]:
        """Σ_i clip(g_i) for each member, by parameter; records the per-sample losses.
        Batches are padded to the longest (padding has clipping weight 0)."""
        width = max(len(b) for b in batches)
        pad = [torch.cat([b, b.new_zeros(width - len(b))]) for b in batches]
        x = torch.stack([self.xs[c][p] for c, p in zip(members, pad, strict=True)])
        y = torch.stack([self.ys[c][p] for c, p in zip(members, pad, strict=True)])
        valid = torch.stack([torch.arange(width) < len(b) for b in batches]).float()
        taps = self.taps
        taps.inputs.clear()
        probes = [
            torch.zeros((len(members), width, *s), requires_grad=True)
            for s in self._output_shapes(params, x)
        ]
        detached = {n: v.detach() for n, v in params.items()}

        def losses_of(p, xb, yb, pr):  # type: ignore[no-untyped-def]
            taps.probes = list(pr)
            logits = torch.func.functional_call(self.template, p, (xb,))
            log_p = torch.log_softmax(logits, dim=-1)
            inputs = tuple(taps.inputs[k] for k in range(len(self.layers)))
            return -log_p.gather(-1, yb.unsqueeze(-1)).squeeze(-1), inputs

        try:
            losses, inputs = torch.func.vmap(losses_of)(detached, x, y, probes)
        finally:
            taps.probes = []
        outgrads = torch.autograd.grad(losses.sum(), probes)
        self._record_losses(members, batches, losses.detach(), step)
        terms = [
            layer_terms(module, a, g)
            for (_, module), a, g in zip(self.layers, inputs, outgrads, strict=True)
        ]
        clip = torch.tensor([self.jobs[c].max_grad_norm for c in members]).unsqueeze(1)
        return clipped_sums(self.layers, terms, clip_weights(terms, clip, valid))

    def _output_shapes(
        self, params: dict[str, torch.Tensor], x: torch.Tensor
    ) -> list[tuple[int, ...]]:
        """Each layer's output shape per sample (one forward pass of one sample, once)."""
        if self._shapes is None:
            outs: dict[int, tuple[int, ...]] = {}
            handles = [
                module.register_forward_hook(
                    lambda _m, _i, o, k=k: outs.__setitem__(k, tuple(o.shape[1:]))
                )
                for k, (_, module) in enumerate(self.layers)
            ]
            try:
                with torch.no_grad():
                    one = {n: v[0] for n, v in params.items()}
                    torch.func.functional_call(self.template, one, (x[0, :1],))
            finally:
                for handle in handles:
                    handle.remove()
            self._shapes = [outs[k] for k in range(len(self.layers))]
        return self._shapes

    def _record_losses(
        self, members: list[int], batches: list[torch.Tensor], losses: torch.Tensor, step: int
    ) -> None:
        """The last epoch's loss: per-sample losses summed over non-empty batches (Opacus's
        path adds ``mean loss × batch size``)."""
        for row, (c, b) in enumerate(zip(members, batches, strict=True)):
            if step >= self.last_epoch_start[c] and len(b):
                self.loss_sum[c] += float(losses[row, : len(b)].sum())
                self.loss_count[c] += len(b)

    def _update(
        self,
        members: list[int],
        index: torch.Tensor,
        everyone: bool,
        params: dict[str, torch.Tensor],
        summed: dict[str, torch.Tensor],
    ) -> None:
        """Noise, Opacus's scaling, ``torch.optim.SGD``'s step and FedProx's, in place."""
        jobs = [self.jobs[c] for c in members]
        std = [j.noise_multiplier * j.max_grad_norm for j in jobs]
        ebs = torch.tensor([float(self.ebs[c]) for c in members])
        lr = torch.tensor([j.learning_rate for j in jobs])
        momentum = torch.tensor([j.momentum for j in jobs])
        prox = torch.tensor([j.learning_rate * j.proximal_mu for j in jobs])
        velocity = self.velocity
        if velocity and not everyone:
            velocity = {n: v[index] for n, v in velocity.items()}
        with torch.no_grad():
            for n in self.names:  # model.parameters() order, as DPOptimizer.add_noise
                shape = params[n].shape[1:]
                noise = torch.stack(
                    [
                        gaussian_noise(shape, s, j.noise_generator)
                        for j, s in zip(jobs, std, strict=True)
                    ]
                )
                view = (-1,) + (1,) * len(shape)
                grad = (summed[n] + noise) / ebs.view(view)
                if velocity:  # torch.optim.SGD: b ← m·b + g (b = g at the first step)
                    grad = velocity[n].mul_(momentum.view(view)).add_(grad)
                    if not everyone:
                        self.velocity[n].index_copy_(0, index, grad)
                params[n].sub_(lr.view(view) * grad)
                if self.initial:
                    start = self.initial[n] if everyone else self.initial[n][index]
                    params[n].sub_(prox.view(view) * (params[n] - start))
                if not everyone:
                    self.stacked[n].index_copy_(0, index, params[n])


def _buckets(sizes: list[int]) -> list[list[int]]:
    """Rows grouped so that padding each group to its longest batch wastes little:
    sorted by size, cut into at most 4 groups of about equal count (one ``vmap`` call
    each; a call costs about as much as a few padded samples)."""
    order = sorted(range(len(sizes)), key=sizes.__getitem__)
    count = min(4, -(-len(order) // 8))
    cuts = [round(i * len(order) / count) for i in range(count + 1)]
    return [sorted(order[cuts[i] : cuts[i + 1]]) for i in range(count) if cuts[i] < cuts[i + 1]]
