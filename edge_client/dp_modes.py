"""Which Opacus per-sample-gradient mode a site uses for each task's model.

``dp-grad-sample-mode = "auto"`` (the default) picks the mode measured fastest for the
task's model: one DP-SGD epoch per mode and batch size, process CPU time, one torch
thread (``python bench/dp.py --modes``, table in ``docs/privacy.md``). A mode is kept for
a model when it was fastest at both batch sizes measured (16 and 64); a task not in the
table gets ghost clipping, the fastest on the convolutional model. Every mode runs the
same mechanism (Opacus's clipping, noise and Poisson sampling), so the choice changes
time only, never the privacy accounting.
"""

from __future__ import annotations

from typing import Final

from privacy.dp.config import GradSampleMode, OpacusMode

#: Measured fastest Opacus mode per built-in task (bench/dp.py --modes, 2026-12-04).
FASTEST_MODE: Final[dict[str, OpacusMode]] = {
    "digits-cnn": "ghost",
    "breast-cancer-mlp": "hooks",
    "synthetic-logreg": "hooks",
}
#: For a task the table does not name.
FALLBACK_MODE: Final[OpacusMode] = "ghost"


def resolve_grad_sample_mode(mode: GradSampleMode, *, task: str) -> OpacusMode:
    """The Opacus mode to run: ``mode`` itself, or for ``"auto"`` the task's measured one."""
    if mode == "auto":
        return FASTEST_MODE.get(task, FALLBACK_MODE)
    return mode
