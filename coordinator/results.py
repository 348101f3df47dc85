"""Per-round records and the files a run leaves: metrics.json, metrics.csv, model.pt.

Files are replaced atomically (write to a temporary file, then rename) so a crash never
leaves a half-written metrics file or model.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from privacy.private_files import write_private_bytes


@dataclass
class RoundRecord:
    """What happened in one round. ``accuracy``/``loss`` are the central evaluation of
    the new global model; ``clients`` counts replies that were aggregated."""

    round: int
    accuracy: float
    loss: float
    duration_s: float
    clients: int
    selected: int
    failures: int = 0
    applied: bool = True
    extra: dict[str, float] = field(default_factory=dict)

    def as_row(self) -> dict[str, Any]:
        row = asdict(self)
        row.update(row.pop("extra"))
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder; the file is
    0600 and missing folders 0700 (run folders are private, issue 14)."""
    write_private_bytes(path, data)


def metrics_document(
    config: dict[str, Any],
    rounds: list[RoundRecord],
    sections: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``metrics.json`` contract: config, rounds[], final_accuracy, and the items of
    ``sections`` (further top-level sections, e.g. ``carbon``) merged in."""
    rows = [r.as_row() for r in rounds]
    final = next((r["accuracy"] for r in reversed(rows) if r["accuracy"] is not None), None)
    return {"config": config, "rounds": rows, "final_accuracy": final, **(sections or {})}


def write_results(
    out_dir: Path,
    *,
    config: dict[str, Any],
    rounds: list[RoundRecord],
    state_dict: dict[str, torch.Tensor] | None,
    sections: dict[str, Any] | None = None,
) -> None:
    """Write metrics.json, metrics.csv and (when given) model.pt into ``out_dir``;
    ``sections`` are further top-level sections of metrics.json."""
    doc = metrics_document(config, rounds, sections=sections)
    atomic_write_bytes(out_dir / "metrics.json", json.dumps(doc, indent=2).encode())
    rows = doc["rounds"]
    if rows:
        columns = list(dict.fromkeys(col for row in rows for col in row))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_bytes(out_dir / "metrics.csv", buf.getvalue().encode())
    if state_dict is not None:
        buf_model = io.BytesIO()
        torch.save(state_dict, buf_model)
        atomic_write_bytes(out_dir / "model.pt", buf_model.getvalue())
