"""Which DP-SGD mode a site runs for each task's model.

``dp-grad-sample-mode = "auto"`` (the default) picks the mode measured fastest for the
task's model: one DP-SGD epoch per mode and batch size, process CPU time over a plain
epoch's, one torch thread (``python bench/dp.py --modes --task T``, table in
``docs/privacy.md``). :data:`MEASURED` holds those ratios; the fastest mode is the one
with the lowest sum of its ratios at batch 16 and 64. ``fused`` (``privacy.dp.fused``)
trains only models made of ``Linear``/``Conv2d`` layers: for another model, ``auto``
and ``fused`` run the fastest measured Opacus mode instead (ghost clipping for a task
not in the table), and the log says so once. Every mode runs the same mechanism
(Opacus's Poisson sampling, clipping and noise), so the choice changes time only,
never the privacy accounting.
"""

from __future__ import annotations

import logging
from typing import Final, cast

from torch import nn

from privacy.dp.config import OPACUS_MODES, GradSampleMode, OpacusMode, TrainingMode
from privacy.dp.fused import supported_layers

log = logging.getLogger(__name__)

#: DP/plain CPU time at batch (16, 64), one epoch of the task's training split
#: (bench/dp.py --modes --task T, 2026-12-04).
MEASURED: Final[dict[str, dict[TrainingMode, tuple[float, float]]]] = {
    "credit-scoring": {"fused": (3.45, 3.32), "hooks": (7.18, 7.89), "ghost": (8.99, 9.68)},
    "digits-cnn": {"fused": (1.85, 1.83), "hooks": (3.63, 3.67), "ghost": (3.72, 3.07)},
    "breast-cancer-mlp": {"fused": (3.09, 2.34), "hooks": (5.60, 5.69), "ghost": (6.62, 6.18)},
    "synthetic-logreg": {"fused": (4.12, 3.38), "hooks": (7.11, 7.32), "ghost": (8.89, 8.48)},
}
#: The Opacus mode for a task the table does not name (fastest on the CNN).
FALLBACK_MODE: Final[OpacusMode] = "ghost"


def _fastest(task: str, modes: tuple[str, ...]) -> TrainingMode | None:
    table = [(r[0] + r[1], m) for m, r in MEASURED.get(task, {}).items() if m in modes]
    return min(table)[1] if table else None


def fastest_mode(task: str) -> TrainingMode:
    """The measured fastest mode of ``task`` (``fused`` for a task not in the table: it
    falls back to Opacus where the model needs it)."""
    return _fastest(task, ("fused", *OPACUS_MODES)) or "fused"


def fastest_opacus_mode(task: str) -> OpacusMode:
    """The measured fastest Opacus mode of ``task`` (:data:`FALLBACK_MODE` if unknown)."""
    return cast(OpacusMode, _fastest(task, OPACUS_MODES) or FALLBACK_MODE)


def resolve_grad_sample_mode(
    mode: GradSampleMode, *, task: str, model: nn.Module | None = None
) -> TrainingMode:
    """The mode to run: ``mode`` itself, or for ``"auto"`` the task's measured fastest;
    ``fused`` becomes the task's fastest Opacus mode when ``model`` has layers fused
    DP-SGD does not train (logged once)."""
    chosen: TrainingMode = fastest_mode(task) if mode == "auto" else mode
    if chosen == "fused" and model is not None and supported_layers(model) is None:
        return fused_fallback(model, fastest_opacus_mode(task))
    return chosen


_FALLBACK_LOGGED: set[str] = set()


def fused_fallback(
    model: nn.Module, mode: OpacusMode, why: str = "has layers other than Linear and Conv2d"
) -> OpacusMode:
    """``mode``, the Opacus mode a model ``fused`` cannot train runs instead; says so in
    the log once per model class."""
    name = type(model).__name__
    if name not in _FALLBACK_LOGGED:
        _FALLBACK_LOGGED.add(name)
        log.info(
            "DP-SGD: fused mode cannot train %s (it %s), so Opacus's %s mode trains it "
            "(same mechanism)",
            name,
            why,
            mode,
        )
    return mode
