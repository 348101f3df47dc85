"""One registry of named tasks. Registering a name twice is an error.

The built-in tasks are imported when first looked up, each on its own: a task's module
imports what its data needs (scikit-learn for digits and breast cancer, which alone
takes most of a second), and a run of one task should not pay for the others.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tasks.base import TaskSpec

_TASKS: dict[str, TaskSpec] = {}
_DATASET_TASKS: dict[str, TaskSpec] = {}  # Hugging Face datasets by task name (hf_data.py)
# Built-in task name → the module that registers it.
BUILTIN_TASKS: dict[str, str] = {
    "breast-cancer-mlp": "tasks.breast_cancer",
    "credit-scoring": "tasks.credit_scoring",
    "digits-cnn": "tasks.digits",
    "synthetic-logreg": "tasks.synthetic",
}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add ``spec`` to the registry; refuse a duplicate name."""
    if spec.name in _TASKS:
        raise ValueError(f"task {spec.name!r} is already registered")
    _TASKS[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    """Look a task up by name, with the list of valid names in the error."""
    if name not in _TASKS and name in BUILTIN_TASKS:
        importlib.import_module(BUILTIN_TASKS[name])  # registers it
    if name not in _TASKS and name.startswith("hf:") and len(name) > 3:
        # a dataset (hf:NAME[@DIR]): built from its name, not listed among the tasks
        if name not in _DATASET_TASKS:
            from tasks.hf_data import build_task

            _DATASET_TASKS[name] = build_task(name)
        return _DATASET_TASKS[name]
    try:
        return _TASKS[name]
    except KeyError:
        raise ValueError(
            f"unknown task {name!r}; choose one of: {', '.join(available_tasks())}"
        ) from None


def is_task_name(name: str) -> bool:
    """Whether ``name`` names a task: a registered or built-in one, or a Hugging Face
    dataset's (``hf:NAME[@DIR]``, tasks/hf_data.py; checked for syntax only)."""
    return name in _TASKS or name in BUILTIN_TASKS or (name.startswith("hf:") and len(name) > 3)


def available_tasks() -> list[str]:
    """Names of every registered task and every built-in one, sorted (without
    importing the built-in tasks' modules)."""
    return sorted(set(_TASKS) | set(BUILTIN_TASKS))
