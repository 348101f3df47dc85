"""The model pool: a reused model holds exactly the weights it is given."""

from __future__ import annotations

import pytest
import torch

from tasks import get_task
from tasks.model_pool import give_back, pooled, take_model


def _state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return get_task("breast-cancer-mlp").build_model().state_dict()


def test_a_given_back_model_is_reused_with_the_new_weights_and_a_clean_slate() -> None:
    # Prepare: a model that trained a step (gradients set, eval mode left on).
    first = take_model("breast-cancer-mlp", _state(1))
    first(torch.randn(4, 30)).sum().backward()
    first.eval()
    give_back("breast-cancer-mlp", first)
    before = pooled("breast-cancer-mlp")
    # Execute
    second = take_model("breast-cancer-mlp", _state(2))
    # Assert: the same object, every tensor overwritten, no stale gradients, training mode.
    assert second is first and pooled("breast-cancer-mlp") == before - 1
    for name, value in _state(2).items():
        torch.testing.assert_close(second.state_dict()[name], value, rtol=0, atol=0)
    assert all(p.grad is None for p in second.parameters())
    assert second.training


def test_weights_that_do_not_fit_are_refused() -> None:
    state = _state(3)
    state.pop(next(iter(state)))
    give_back("breast-cancer-mlp", take_model("breast-cancer-mlp", _state(3)))
    with pytest.raises(RuntimeError, match="Missing key"):
        take_model("breast-cancer-mlp", state)


def test_a_pooled_model_refuses_a_wrong_shape_like_load_state_dict() -> None:
    state = _state(4)
    name = next(iter(state))
    state[name] = torch.zeros(3, 3)
    give_back("breast-cancer-mlp", take_model("breast-cancer-mlp", _state(4)))
    with pytest.raises(RuntimeError, match="size mismatch"):
        take_model("breast-cancer-mlp", state)
