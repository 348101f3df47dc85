"""Built models kept for reuse between the messages a process handles.

Building a task's model (constructing every layer, randomly initialising its
weights) costs several times more than loading weights into it, and a client handling
a message overwrites every weight with the global model's anyway. So a client takes a
model with :func:`take_model` — one built for an earlier message if there is one, with
all of its state (parameters and buffers) loaded from the given state dict, its
gradients cleared and training mode set — and gives it back with :func:`give_back`
once nothing refers to it. Building a model draws from torch's global random number
generator; a pooled model does not, and nothing in a client depends on that generator.

Only a model whose structure is unchanged may be given back: never one that Opacus has
wrapped or hooked. At most ``MAX_POOLED`` models per task are kept; a simulated round
holds one per client in flight.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from tasks.registry import get_task

MAX_POOLED = 1024

_POOLS: dict[str, list[nn.Module]] = {}


def take_model(task_name: str, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """A model of ``task_name`` holding ``state_dict`` (strictly loaded), in train mode."""
    model: nn.Module | None = None
    pool = _POOLS.get(task_name)
    if pool:
        try:
            model = pool.pop()
        except IndexError:  # another thread took the last one
            model = None
    if model is None:
        model = get_task(task_name).build_model()
    else:
        model.zero_grad(set_to_none=True)
        model.train()
    model.load_state_dict(state_dict)
    return model


def give_back(task_name: str, model: nn.Module) -> None:
    """Return a model from :func:`take_model` (unwrapped, unhooked) for later reuse."""
    pool = _POOLS.setdefault(task_name, [])
    if len(pool) < MAX_POOLED:
        pool.append(model)


def pooled(task_name: str) -> int:
    """How many built models of ``task_name`` wait for reuse."""
    return len(_POOLS.get(task_name, ()))
