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

import weakref
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from tasks.registry import get_task

MAX_POOLED = 1024


@dataclass
class _Pooled:
    """A pooled model and what reusing it needs, found once per model."""

    model: nn.Module
    modules: list[nn.Module]
    parameters: list[nn.Parameter]
    # Its state tensors by name, when plain copies load it exactly as
    # ``load_state_dict`` would (no load hooks, no custom ``_load_from_state_dict``).
    tensors: dict[str, torch.Tensor] | None

    @classmethod
    def of(cls, model: nn.Module) -> _Pooled:
        modules = list(model.modules())
        plain = all(_plain_loading(m) for m in modules)
        tensors = dict(model.state_dict(keep_vars=True)) if plain else None
        return cls(model, modules, list(model.parameters()), tensors)


_POOLS: dict[str, list[_Pooled]] = {}
_KNOWN: weakref.WeakKeyDictionary[nn.Module, _Pooled] = weakref.WeakKeyDictionary()


def take_model(task_name: str, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """A model of ``task_name`` holding ``state_dict`` (strictly loaded), in train mode."""
    entry: _Pooled | None = None
    pool = _POOLS.get(task_name)
    if pool:
        try:
            entry = pool.pop()
        except IndexError:  # another thread took the last one
            entry = None
    if entry is None:
        model = get_task(task_name).build_model()
        model.load_state_dict(state_dict)
        return model
    for parameter in entry.parameters:  # zero_grad(set_to_none=True)
        parameter.grad = None
    if not all(m.training for m in entry.modules):
        entry.model.train()
    if entry.tensors is None:
        entry.model.load_state_dict(state_dict)
    else:
        _copy_state(entry.tensors, state_dict)
    return entry.model


def give_back(task_name: str, model: nn.Module) -> None:
    """Return a model from :func:`take_model` (unwrapped, unhooked) for later reuse."""
    pool = _POOLS.setdefault(task_name, [])
    if len(pool) < MAX_POOLED:
        entry = _KNOWN.get(model)
        if entry is None:
            entry = _KNOWN[model] = _Pooled.of(model)
        pool.append(entry)


def _plain_loading(module: nn.Module) -> bool:
    return (
        not module._load_state_dict_pre_hooks
        and not module._load_state_dict_post_hooks
        and type(module)._load_from_state_dict is nn.Module._load_from_state_dict
    )


def _copy_state(tensors: dict[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor]) -> None:
    """``load_state_dict(state_dict)`` (strict) for a module whose loading is plain
    copies: the same checks and errors, without walking the module tree."""
    if tensors.keys() != state_dict.keys():
        missing = sorted(tensors.keys() - state_dict.keys())
        unexpected = sorted(state_dict.keys() - tensors.keys())
        raise RuntimeError(
            f"Error(s) in loading state_dict: Missing key(s): {missing}; "
            f"Unexpected key(s): {unexpected}"
        )
    with torch.no_grad():
        for name, target in tensors.items():
            value = state_dict[name]
            if value.shape != target.shape:
                raise RuntimeError(
                    f"Error(s) in loading state_dict: size mismatch for {name}: copying a "
                    f"param with shape {tuple(value.shape)}, the model has {tuple(target.shape)}"
                )
            target.copy_(value)


def pooled(task_name: str) -> int:
    """How many built models of ``task_name`` wait for reuse."""
    return len(_POOLS.get(task_name, ()))
