"""Export a trained PyTorch model to ONNX or TFLite (build side; imports torch).

ONNX goes through ``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript) at the
recipe's opset, with a symbolic batch dimension when the recipe asks for one; the IR
version is lowered to the smallest that the opset needs, so older device runtimes load
the model. TFLite goes through ``litert-torch`` (the ``tflite`` extra, coordinator side
only) with a fixed batch.

Both exporters print progress and native logs; they run under :func:`quiet` so a build
shows its own progress bar only, and the captured log is quoted when an export fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tasks import TaskSpec


class ExportError(RuntimeError):
    """An exporter failed, or the exporter this format needs is not installed."""


class CheckpointError(ValueError):
    """A checkpoint file is missing, not a PyTorch state dict, or does not fit the task."""


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint(task: TaskSpec, path: Path) -> nn.Module:
    """Build ``task``'s model and load the state dict saved at ``path`` (eval mode, CPU).

    The file must hold ``torch.save(model.state_dict(), path)`` for this task's model
    (what ``fedfleet simulate`` writes as ``model.pt``). Loading uses
    ``weights_only=True``: a checkpoint cannot run code.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; check the path")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint; save one with "
            "torch.save(model.state_dict(), path)"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"{path} does not hold a plain state dict of tensors; save one with "
            "torch.save(model.state_dict(), path)"
        )
    model = task.build_model()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = str(err).strip().splitlines()
        reason = detail[1].strip() if len(detail) > 1 else detail[0] if detail else ""
        raise CheckpointError(
            f"{path} does not fit task {task.name!r} ({reason[:200]}); "
            "pass the --task the checkpoint was trained for"
        ) from None
    return model.eval()


def export_onnx(
    model: nn.Module,
    *,
    sample: np.ndarray,
    opset: int,
    dynamic_batch: bool,
    input_name: str = "input",
    output_name: str = "output",
) -> bytes:
    """Serialized ONNX of ``model`` traced on ``sample`` (a float32 batch).

    With ``dynamic_batch`` the first dimension is symbolic (``batch``); otherwise the
    model is fixed to ``len(sample)``.
    """
    model = model.eval()
    x = torch.from_numpy(np.ascontiguousarray(sample, dtype=np.float32))
    if dynamic_batch and len(x) < 2:
        x = torch.cat([x, x])  # a batch of 1 would be specialised to a constant
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    with quiet() as log:
        try:
            program = torch.onnx.export(
                model,
                (x,),
                dynamo=True,
                opset_version=opset,
                input_names=[input_name],
                output_names=[output_name],
                dynamic_shapes=dynamic_shapes,
                verbose=False,
                optimize=True,
            )
        except Exception as err:
            raise ExportError(f"ONNX export failed: {_first_line(err)}{log.tail()}") from None
    if program is None:  # pragma: no cover - dynamo=True always returns a program
        raise ExportError("ONNX export returned no program")
    proto = program.model_proto
    default_opsets = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    if default_opsets and default_opsets[0] != opset:
        raise ExportError(
            f"the exporter produced opset {default_opsets[0]}, the recipe asks for {opset}; "
            "choose an opset this torch version exports"
        )
    return finalize_onnx(proto.SerializeToString())


def finalize_onnx(model: bytes) -> bytes:
    """Make a serialized ONNX model portable and reproducible.

    Drops exporter bookkeeping (per-node metadata with stack traces and local paths),
    opset imports of domains no node uses (the quantizer's pre-processing adds several
    that older runtimes and TensorRT do not know), and lowers the IR version to the
    smallest the remaining opsets need. The result passes ``onnx.checker``.
    """
    import onnx
    import onnx.helper

    proto = onnx.load_from_string(model)
    _sort_topologically(proto.graph)
    for node in proto.graph.node:
        del node.metadata_props[:]
    del proto.metadata_props[:]
    used = {node.domain or "" for node in proto.graph.node} | {""}
    used |= {f.domain for f in proto.functions}
    kept = [o for o in proto.opset_import if (o.domain or "") in used or o.domain == "ai.onnx"]
    del proto.opset_import[:]
    proto.opset_import.extend(kept)
    proto.ir_version = min(
        proto.ir_version, onnx.helper.find_min_ir_version_for(list(proto.opset_import), True)
    )
    onnx.checker.check_model(proto)
    return bytes(proto.SerializeToString())


def _sort_topologically(graph: Any) -> None:
    # Converters append nodes out of order (onnxruntime's fp16 converter adds its input
    # casts last); onnxruntime copes, the ONNX spec and TensorRT want producers first.
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            return  # a cycle or an outer-scope name: leave the graph for the checker to judge
        ready_ids = {id(n) for n in ready}
        for node in ready:
            copy = type(node)()
            copy.CopyFrom(node)
            ordered.append(copy)
            available.update(node.output)
        pending = [n for n in pending if id(n) not in ready_ids]
    del graph.node[:]
    graph.node.extend(ordered)


TFLITE_INSTALL = (
    "run `make install-tflite` in a fedfleet checkout, or "
    "`pip install --no-deps -r firmware_images/tflite-requirements.txt` (docs/bundle.md)"
)
"""How to install TFLite conversion (coordinator side, ~0.95 GB, never a resolved install)."""


def export_tflite(model: nn.Module, *, sample: np.ndarray) -> bytes:
    """TFLite flatbuffer of ``model`` converted by litert-torch with batch ``len(sample)``."""
    x = torch.from_numpy(np.ascontiguousarray(sample, dtype=np.float32))
    with quiet() as log:
        try:
            import litert_torch
        except ImportError:
            raise ExportError(
                f"TFLite export (rpi4 and other TFLite targets) needs litert-torch, which is "
                f"not installed; {TFLITE_INSTALL}"
            ) from None
        try:
            converted = litert_torch.convert(model.eval(), (x,))
            return bytes(converted.model_content())
        except Exception as err:
            raise ExportError(f"TFLite conversion failed: {_first_line(err)}{log.tail()}") from None


def onnx_opset(model: bytes) -> int | None:
    """The default-domain opset of a serialized ONNX model."""
    import onnx

    proto = onnx.load_from_string(model)
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return None


class _Log:
    def __init__(self, path: Path) -> None:
        self._path = path

    def tail(self, lines: int = 5) -> str:
        try:
            text = self._path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        if not text:
            return ""
        return " | log: " + " / ".join(line.strip() for line in text[-lines:])[:600]


@contextlib.contextmanager
def quiet() -> Iterator[_Log]:
    """Send this process's stdout/stderr (Python and native) to a temporary log file."""
    with tempfile.TemporaryDirectory(prefix="fedfleet-export-") as folder:
        log_path = Path(folder) / "export.log"
        with (
            log_path.open("wb") as sink,
            log_path.open("a", buffering=1, encoding="utf-8", errors="replace") as text,
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            _flush_std()
            saved = [os.dup(1), os.dup(2)]
            try:
                with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
                    os.dup2(sink.fileno(), 1)
                    os.dup2(sink.fileno(), 2)
                    yield _Log(log_path)
            finally:
                _flush_std()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                for fd in saved:
                    os.close(fd)


def _flush_std() -> None:
    import sys

    for stream in (sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__
