"""Fused DP-SGD: Opacus's mechanism without per-sample gradients of linear layers.

The model-agnostic core of DP-SGD (Abadi et al., CCS 2016) exactly as Opacus 1.6 runs
it, shared by a site (``edge_client.dp_training``, ``dp-grad-sample-mode = "fused"``)
and the simulator's cohort trainer (``simulation.batched_dp``):

- **Poisson sampling** (:func:`poisson_batch`): each step takes every record with
  probability ``q = 1 / ceil(n / B)`` (``torch.rand(n, generator) < q``, Opacus's
  ``UniformWithReplacementSampler``) for ``int(1 / q)`` steps an epoch; at each epoch's
  start one int64 is drawn first (the base seed torch's ``DataLoader`` iterator takes
  from the same generator), so the streams match Opacus's ``DPDataLoader``;
- **per-sample clipping** by the L2 norm over all parameters (:func:`clip_weights`):
  ``g_i ← g_i · min(1, C / (‖g_i‖ + 1e-6))`` (``DPOptimizer.clip_and_accumulate``);
- **Gaussian noise** of std ``σ · C`` on the clipped sum (:func:`gaussian_noise`), one
  draw per parameter in ``model.parameters()`` order from the noise generator
  (``DPOptimizer.add_noise``), then division by :func:`expected_batch_size`
  (``loss_reduction="mean"``).

The per-sample norms come from each layer's inputs ``a`` and output gradients ``g``
(:func:`layer_terms`): a linear layer's per-sample gradient ``g aᵀ`` has norm
``‖g‖·‖a‖`` (the ghost norm, Li et al., ICLR 2022) and its clipped sum is one
contraction ``Σ_i w_i g_i a_iᵀ``; a convolution's per-sample gradient is small and is
formed from the unfolded input. Only models whose every parameter belongs to a
``Linear`` or a zero-padded, ungrouped ``Conv2d`` qualify (:func:`supported_layers`).

Tensors here are ``[clients, samples, ...]``: a site is one client.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: Opacus's clipping denominator guard: ``C / (‖g‖ + 1e-6)``.
CLIP_EPS = 1e-6


def sample_rate(num_examples: int, batch_size: int) -> float:
    """Opacus's Poisson rate ``q = 1 / ceil(n / B)`` (``DPDataLoader.from_data_loader``)."""
    return 1 / -(-num_examples // batch_size)


def steps_per_epoch(rate: float) -> int:
    """Steps of one epoch at Poisson rate ``q``: ``int(1 / q)``."""
    return int(1 / rate)


def expected_batch_size(num_examples: int, batch_size: int) -> int:
    """Opacus's ``expected_batch_size`` for Poisson sampling: ``int(n · q)``; the noisy
    sum of clipped per-sample gradients is divided by it (``loss_reduction="mean"``)."""
    return int(num_examples * sample_rate(num_examples, batch_size))


def poisson_batch(
    generator: torch.Generator, num_examples: int, rate: float, *, epoch_start: bool
) -> torch.Tensor:
    """The indices of one Poisson batch, drawn as Opacus's ``DPDataLoader`` draws them."""
    if epoch_start:
        torch.empty((), dtype=torch.int64).random_(generator=generator)
    mask = torch.rand(num_examples, generator=generator) < rate
    return mask.nonzero().reshape(-1)


def gaussian_noise(
    shape: torch.Size | tuple[int, ...], std: float, generator: torch.Generator
) -> torch.Tensor:
    """``N(0, std²)`` noise of ``shape``, drawn as ``DPOptimizer.add_noise`` draws it
    (zeros, no draw, for ``std == 0``)."""
    if std > 0:
        return torch.normal(0.0, std, size=tuple(shape), generator=generator)
    return torch.zeros(shape)


def supported_layers(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """The model's parametrised layers if every parameter belongs to a ``Linear`` or a
    zero-padded, ungrouped ``Conv2d``, else None (the model needs Opacus)."""
    layers: list[tuple[str, nn.Module]] = []
    owned: set[str] = set()
    for name, module in model.named_modules():
        own = [n for n, _ in module.named_parameters(recurse=False)]
        if not own:
            continue
        if isinstance(module, nn.Conv2d):
            if module.groups != 1 or module.padding_mode != "zeros":
                return None
            if isinstance(module.padding, str):
                return None
        elif not isinstance(module, nn.Linear):
            return None
        layers.append((name, module))
        owned.update(f"{name}.{n}" if name else n for n in own)
    params = {n for n, _ in model.named_parameters()}
    return layers if layers and owned == params else None


def _sq_norm(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return torch.linalg.vector_norm(x, dim=dims).square()


@dataclass
class LayerTerms:
    """One layer's per-sample quantities for a (padded) batch, clients × samples."""

    sq_norms: torch.Tensor  # [C, B]: squared norm of each sample's gradient of this layer
    bias: torch.Tensor | None  # [C, B, out]: each sample's bias gradient
    inputs: torch.Tensor  # linear: [C, B, in]; conv/sequence: per-sample weight grads
    outgrads: torch.Tensor | None  # linear: [C, B, out]; else None

    def weight_sum(self, weights: torch.Tensor) -> torch.Tensor:
        """Σ_i w_i · (sample i's weight gradient), per client: [C, out, in...]."""
        if self.outgrads is not None:  # g_i a_iᵀ summed with weights: one bmm
            return torch.bmm((self.outgrads * weights.unsqueeze(-1)).transpose(1, 2), self.inputs)
        return torch.einsum("cb,cbok->cok", weights, self.inputs)


def layer_terms(module: nn.Module, a: torch.Tensor, g: torch.Tensor) -> LayerTerms:
    """Per-sample gradient norms and what the clipped sums need, from the layer's
    inputs ``a`` and output gradients ``g`` (both [clients, samples, ...])."""
    c, b = g.shape[:2]
    has_bias = getattr(module, "bias", None) is not None
    if isinstance(module, nn.Conv2d):
        unfolded = F.unfold(
            a.flatten(0, 1),
            module.kernel_size,
            dilation=module.dilation,
            padding=module.padding,  # type: ignore[arg-type]
            stride=module.stride,
        )  # [CB, Cin·kh·kw, L]
        out = g.flatten(0, 1).flatten(2)  # [CB, Cout, L]
        per_sample = torch.bmm(out, unfolded.transpose(1, 2))  # [CB, Cout, K]
        sq = _sq_norm(per_sample, (1, 2)).view(c, b)
        bias = out.sum(-1).view(c, b, -1) if has_bias else None
        if bias is not None:
            sq = sq + _sq_norm(bias, (-1,))
        return LayerTerms(sq, bias, per_sample.view(c, b, *per_sample.shape[1:]), None)
    if a.dim() == 3:  # Linear on one vector per sample: ‖g aᵀ‖ = ‖g‖·‖a‖
        g_sq = _sq_norm(g, (-1,))
        sq = _sq_norm(a, (-1,)) * g_sq + (g_sq if has_bias else 0.0)
        return LayerTerms(sq, g if has_bias else None, a, g)
    a3, g3 = a.reshape(c, b, -1, a.shape[-1]), g.reshape(c, b, -1, g.shape[-1])
    per_sample = torch.einsum("cbto,cbti->cboi", g3, a3)
    bias = g3.sum(2) if has_bias else None
    sq = _sq_norm(per_sample, (2, 3)) + (_sq_norm(bias, (-1,)) if bias is not None else 0.0)
    return LayerTerms(sq, bias, per_sample, None)


def clip_weights(
    terms: list[LayerTerms], max_grad_norm: torch.Tensor | float, valid: torch.Tensor | None
) -> torch.Tensor:
    """Each sample's clipping factor ``min(1, C / (‖g_i‖ + 1e-6))`` over all layers,
    [C, B]; ``max_grad_norm`` is a float or a [C, 1] tensor; padding rows (``valid`` 0)
    get weight 0."""
    sq = terms[0].sq_norms
    for t in terms[1:]:
        sq = sq + t.sq_norms
    weights = (max_grad_norm / (sq.sqrt() + CLIP_EPS)).clamp(max=1.0)
    return weights * valid if valid is not None else weights


def clipped_sums(
    layers: list[tuple[str, nn.Module]], terms: list[LayerTerms], weights: torch.Tensor
) -> dict[str, torch.Tensor]:
    """``Σ_i w_i g_i`` per parameter name, [C, *parameter shape]."""
    clients = weights.shape[0]
    summed: dict[str, torch.Tensor] = {}
    for (name, module), t in zip(layers, terms, strict=True):
        prefix = f"{name}." if name else ""
        shape: tuple[int, ...] = tuple(module.weight.shape)  # type: ignore[arg-type]
        summed[prefix + "weight"] = t.weight_sum(weights).reshape(clients, *shape)
        if t.bias is not None:
            summed[prefix + "bias"] = torch.einsum("cb,cbo->co", weights, t.bias)
    return summed


class FusedClipper:
    """One model's fused clipped-gradient sum (a site: one client, no ``vmap``).

    :meth:`clipped_sum` runs the batch forward with hooks on the supported layers that
    keep each layer's input and add a zero probe to its output, differentiates the
    summed per-sample cross-entropy to the probes (each sample's own output gradient,
    since samples do not mix), and forms the clipped sum from them."""

    def __init__(self, model: nn.Module, layers: list[tuple[str, nn.Module]]) -> None:
        self.model = model
        self.layers = layers
        self._inputs: dict[int, torch.Tensor] = {}
        self._probes: dict[int, torch.Tensor] = {}

    def _hook(self, k: int):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor):  # type: ignore[no-untyped-def]
            if k in self._probes:
                raise ValueError("fused DP-SGD needs each Linear/Conv2d layer called once a pass")
            self._inputs[k] = inputs[0].detach()
            probe = torch.zeros_like(output, requires_grad=True)
            self._probes[k] = probe
            return output + probe

        return hook

    def calls_each_layer_once(self, x: torch.Tensor) -> bool:
        """Whether a forward pass of ``x`` calls every supported layer exactly once (a
        layer used twice would need its per-sample terms summed before the norm)."""
        calls = [0] * len(self.layers)

        def counter(k: int):  # type: ignore[no-untyped-def]
            return lambda *_: calls.__setitem__(k, calls[k] + 1)

        handles = [m.register_forward_hook(counter(k)) for k, (_, m) in enumerate(self.layers)]
        try:
            with torch.no_grad():
                self.model(x)
        finally:
            for handle in handles:
                handle.remove()
        return all(c == 1 for c in calls)

    def clipped_sum(
        self, x: torch.Tensor, y: torch.Tensor, max_grad_norm: float
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``Σ_i clip(g_i)`` by parameter name (parameter shapes) and the per-sample
        losses, for a non-empty batch."""
        self._inputs, self._probes = {}, {}
        handles = [m.register_forward_hook(self._hook(k)) for k, (_, m) in enumerate(self.layers)]
        try:
            with torch.enable_grad():
                logits = self.model(x)
                losses = F.cross_entropy(logits, y, reduction="none")
        finally:
            for handle in handles:
                handle.remove()
        if len(self._probes) != len(self.layers):
            raise ValueError("fused DP-SGD needs each Linear/Conv2d layer called once a pass")
        order = range(len(self.layers))
        outgrads = torch.autograd.grad(losses.sum(), [self._probes[k] for k in order])
        terms = [
            layer_terms(module, self._inputs[k].unsqueeze(0), g.unsqueeze(0))
            for k, (_, module), g in zip(order, self.layers, outgrads, strict=True)
        ]
        weights = clip_weights(terms, max_grad_norm, None)
        summed = clipped_sums(self.layers, terms, weights)
        self._inputs, self._probes = {}, {}
        return {n: v[0] for n, v in summed.items()}, losses.detach()
