"""One registry of named tasks. Registering a name twice is an error."""

from __future__ import annotations

from tasks.base import TaskSpec

_TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add ``spec`` to the registry; refuse a duplicate name."""
    if spec.name in _TASKS:
        raise ValueError(f"task {spec.name!r} is already registered")
    _TASKS[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    """Look a task up by name, with the list of valid names in the error."""
    _load_builtin()
    try:
        return _TASKS[name]
    except KeyError:
        raise ValueError(
            f"unknown task {name!r}; choose one of: {', '.join(available_tasks())}"
        ) from None


def available_tasks() -> list[str]:
    """Names of every registered task, sorted."""
    _load_builtin()
    return sorted(_TASKS)


def _load_builtin() -> None:
    # Imported here so that importing the registry stays cheap and cycle-free.
    import tasks.breast_cancer
    import tasks.digits
    import tasks.synthetic  # noqa: F401
