"""What a build says about itself: its version label, and how to install TFLite
conversion when it is missing."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from firmware_images.build import BuildRequest, version_label
from firmware_images.export import ExportError, export_tflite
from firmware_images.quantize import quantize_tflite_static
from firmware_images.targets import resolve_target

SHA = "3a" * 32


def _request(**kwargs: str) -> BuildRequest:
    return BuildRequest(
        recipe=resolve_target("cpu-x86"),
        task="digits-cnn",
        checkpoint=Path("model.pt"),
        key=Path("ops.key"),
        out=Path("m.ffb"),
        **kwargs,  # type: ignore[arg-type]
    )


def test_a_bundle_built_from_registry_version_is_labelled_with_it() -> None:
    assert version_label(_request(model_version="1"), SHA) == "v1"


def test_explicit_version_wins_and_a_bare_checkpoint_is_labelled_by_hash() -> None:
    assert version_label(_request(model_version="1", version="2026.1"), SHA) == "2026.1"
    assert version_label(_request(), SHA) == "ckpt-3a3a3a3a3a3a"


def test_missing_tflite_converter_says_to_run_make_install_tflite(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "litert_torch", None)  # import fails: not installed
    with pytest.raises(ExportError) as excinfo:
        export_tflite(nn.Linear(2, 2), sample=np.zeros((1, 2), dtype=np.float32))
    message = str(excinfo.value)
    assert "rpi4" in message and "`make install-tflite`" in message
    assert "pip install --no-deps -r firmware_images/tflite-requirements.txt" in message


def test_missing_tflite_quantizer_says_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ai_edge_quantizer", None)
    with pytest.raises(ExportError, match="make install-tflite"):
        quantize_tflite_static(b"model", np.zeros((1, 2), dtype=np.float32))
