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


def _clean(value: Any) -> Any:
    """``value`` with every NaN float replaced by None (JSON has no NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


@dataclass
class RoundRecord:
    """What happened in one round. ``accuracy``/``loss`` are the central evaluation of
    the new global model; ``clients`` counts replies that were aggregated.
    ``fairness`` is the round's fairness audit (``tasks.fairness.fairness_summary``) when
    the round had a federated evaluation, else None."""

    round: int
    accuracy: float
    loss: float
    duration_s: float
    clients: int
    selected: int
    failures: int = 0
    applied: bool = True
    extra: dict[str, float] = field(default_factory=dict)
    fairness: dict[str, Any] | None = None

    def as_row(self) -> dict[str, Any]:
        """The round as metrics.json lists it (``fairness`` an object, when audited)."""
        row = asdict(self)
        row.update(row.pop("extra"))
        if row["fairness"] is None:
            del row["fairness"]
        return _clean(row)

    def csv_row(self) -> dict[str, Any]:
        """The round as metrics.csv lists it: the fairness audit's scalars flattened
        into ``fairness_*`` columns, its per-group table left to metrics.json."""
        row = self.as_row()
        audit = row.pop("fairness", None) or {}
        row.update(
            {
                f"fairness_{k}": v
                for k, v in audit.items()
                if isinstance(v, int | float | str) or v is None
            }
        )
        return row


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder; the file is
    0600 and missing folders 0700 (run folders are private, issue 14)."""
    write_private_bytes(path, data)


def metrics_document(
    config: dict[str, Any],
    rounds: list[RoundRecord],
    sections: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``metrics.json`` contract: config, rounds[], final_accuracy, and each of
    ``sections``' items as a further top-level key."""
    rows = [r.as_row() for r in rounds]
    final = next((r["accuracy"] for r in reversed(rows) if r["accuracy"] is not None), None)
    return {"config": config, "rounds": rows, "final_accuracy": final, **(sections or {})}


def fairness_section(rounds: list[RoundRecord]) -> dict[str, Any]:
    """``{"fairness": the last audited round's summary}``, or nothing when no round was
    audited."""
    audited = [r for r in rounds if r.fairness is not None]
    if not audited:
        return {}
    return {"fairness": _clean({"round": audited[-1].round, **(audited[-1].fairness or {})})}


def write_results(
    out_dir: Path,
    *,
    config: dict[str, Any],
    rounds: list[RoundRecord],
    state_dict: dict[str, torch.Tensor] | None,
    sections: dict[str, Any] | None = None,
) -> None:
    """Write metrics.json, metrics.csv and (when given) model.pt into ``out_dir``;
    ``sections`` are further top-level sections of metrics.json (the fairness audit's
    summary is added here)."""
    doc = metrics_document(
        config, rounds, sections={**fairness_section(rounds), **(sections or {})}
    )
    atomic_write_bytes(out_dir / "metrics.json", json.dumps(doc, indent=2).encode())
    rows = [r.csv_row() for r in rounds]
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
