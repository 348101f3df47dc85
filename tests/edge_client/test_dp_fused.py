"""Fused DP-SGD at a site (``dp-grad-sample-mode = "fused"``, privacy/dp/fused.py):
against Opacus's PrivacyEngine (oracle), its clipping bound (property), its layer
support and mode choice (unit)."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterator

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from edge_client.dp_modes import (
    MEASURED,
    fastest_mode,
    fastest_opacus_mode,
    resolve_grad_sample_mode,
)
from edge_client.dp_training import train_dp_local
from privacy.dp.fused import FusedClipper, poisson_batch, supported_layers
from tasks import get_task
from tasks.registry import BUILTIN_TASKS


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _train(model: nn.Module, x, y, mode: str, **kw):  # type: ignore[no-untyped-def]
    args = {
        "epochs": 2,
        "batch_size": 8,
        "learning_rate": 0.1,
        "noise_multiplier": 0.7,
        "max_grad_norm": 0.5,
    }
    args.update(kw)
    return train_dp_local(
        model,
        x,
        y,
        grad_sample_mode=mode,  # type: ignore[arg-type]
        sample_generator=_gen(11),
        noise_generator=_gen(12),
        **args,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("task", "kw"),
    [(t, {}) for t in sorted(BUILTIN_TASKS)]
    + [
        ("digits-cnn", {"momentum": 0.9, "proximal_mu": 0.5, "batch_size": 16}),
        ("breast-cancer-mlp", {"batch_size": 64, "epochs": 1, "max_grad_norm": 100.0}),
    ],
)
def test_fused_site_step_equals_opacus_with_the_same_generators(task: str, kw: dict) -> None:
    # Prepare: 45 records at batch 8: rate 1/6, some empty or tiny Poisson batches
    spec = get_task(task)
    data = spec.load_data(0)
    x, y = data.x_train[:45], data.y_train[:45]
    torch.manual_seed(0)
    base = spec.build_model()
    assert supported_layers(base) is not None
    fused, reference = copy.deepcopy(base), copy.deepcopy(base)
    # Execute
    got = _train(fused, x, y, "fused", **kw)
    want = _train(reference, x, y, "hooks", **kw)
    # Assert: same sampled batches, same noise draws: same model to float tolerance
    for (name, a), b in zip(fused.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    assert got.steps == want.steps and got.sample_rate == want.sample_rate
    assert math.isclose(got.loss, want.loss, rel_tol=1e-4)
    pairs = zip(fused.parameters(), base.parameters(), strict=True)
    assert any(not torch.equal(a, b) for a, b in pairs)
    # The module is handed back clean: no hooks, no gradients.
    assert all(not m._forward_hooks for m in fused.modules())
    assert all(p.grad is None for p in fused.parameters())


def test_fused_poisson_batches_follow_opacus_sampler_stream() -> None:
    from opacus.data_loader import DPDataLoader
    from torch.utils.data import DataLoader, TensorDataset

    dataset = TensorDataset(torch.arange(30.0).unsqueeze(1), torch.zeros(30).long())
    loader = DPDataLoader.from_data_loader(
        DataLoader(dataset, batch_size=4, generator=_gen(3)), generator=_gen(3)
    )
    ours = _gen(3)
    for epoch in range(2):
        for step, (xb, _) in enumerate(loader):
            index = poisson_batch(ours, 30, 1 / 8, epoch_start=step == 0)
            assert xb.reshape(-1).long().tolist() == index.tolist(), (epoch, step)


class _Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1, stride=2)
        self.fc = nn.Linear(3 * 4 * 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    clip=st.floats(1e-3, 10.0),
    scale=st.floats(0.01, 100.0),
    size=st.integers(1, 6),
)
def test_fused_clipped_per_sample_gradients_never_exceed_the_bound(
    seed: int, clip: float, scale: float, size: int
) -> None:
    # Prepare: a conv + linear model, random records at any scale
    torch.manual_seed(seed)
    model = _Small()
    x = torch.randn(size, 1, 8, 8) * scale
    y = torch.randint(0, 4, (size,))
    layers = supported_layers(model)
    assert layers is not None
    clipper = FusedClipper(model, layers)
    for i in range(size):
        # Execute: the clipped "sum" of a one-record batch is that record's clipped gradient
        summed, _ = clipper.clipped_sum(x[i : i + 1], y[i : i + 1], clip)
        norm = torch.sqrt(sum(v.square().sum() for v in summed.values()))  # type: ignore[arg-type]
        # Assert: ≤ C; and unclipped (= autograd's own gradient) when below it
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        true = torch.sqrt(sum(p.grad.square().sum() for p in model.parameters()))  # type: ignore[union-attr, arg-type]
        assert float(norm) <= clip * (1 + 1e-5)
        expected = min(1.0, clip / (float(true) + 1e-6)) * float(true)
        assert float(norm) == pytest.approx(expected, rel=1e-4, abs=1e-7)


def test_supported_layers_only_linear_and_plain_conv() -> None:
    assert supported_layers(nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2)))
    assert supported_layers(nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2))) is None
    assert supported_layers(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2))) is None
    assert supported_layers(nn.Sequential(nn.Conv2d(4, 4, 3, padding="same"))) is None
    assert supported_layers(nn.Sequential(nn.ReLU())) is None


def test_fused_on_an_unsupported_model_falls_back_to_opacus_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Normed(nn.Sequential):
        pass

    data = get_task("breast-cancer-mlp").load_data(0)
    x, y = data.x_train[:40], data.y_train[:40]
    torch.manual_seed(0)
    model = Normed(nn.Linear(30, 8), nn.GroupNorm(2, 8), nn.ReLU(), nn.Linear(8, 2))
    with caplog.at_level(logging.INFO, logger="edge_client.dp_modes"):
        assert resolve_grad_sample_mode("fused", task="breast-cancer-mlp", model=model) == (
            fastest_opacus_mode("breast-cancer-mlp")
        )
        first = _train(model, x, y, "fused", epochs=1)
        _train(model, x, y, "fused", epochs=1)
    assert first.steps == 5 and math.isfinite(first.loss)
    assert caplog.text.count("fused mode cannot train") == 1
    assert "Normed" in caplog.text


def test_auto_picks_the_lowest_measured_ratio_per_task() -> None:
    for task, table in MEASURED.items():
        best = min(table, key=lambda m: sum(table[m]))  # type: ignore[arg-type]
        assert fastest_mode(task) == best
        assert resolve_grad_sample_mode("auto", task=task) == best
        assert fastest_opacus_mode(task) in ("hooks", "functorch", "ghost")
    assert resolve_grad_sample_mode("ghost", task="digits-cnn") == "ghost"
    assert fastest_mode("not-a-task") == "fused"
    assert fastest_opacus_mode("not-a-task") == "ghost"


def test_fused_on_a_model_that_reuses_a_layer_falls_back_to_opacus(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Linear(30, 30)
            self.out = nn.Linear(30, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(torch.relu(self.inner(torch.relu(self.inner(x)))))

    data = get_task("breast-cancer-mlp").load_data(0)
    x, y = data.x_train[:40], data.y_train[:40]
    torch.manual_seed(0)
    model = Twice()
    assert supported_layers(model) is not None  # layer types alone would qualify
    reference = copy.deepcopy(model)
    with caplog.at_level(logging.INFO, logger="edge_client.dp_modes"):
        result = _train(model, x, y, "fused", epochs=1)
    _train(reference, x, y, "hooks", epochs=1)
    assert "cannot train Twice (it calls a layer more than once" in caplog.text
    assert "Opacus's hooks mode" in caplog.text
    assert result.steps == 5
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b)
