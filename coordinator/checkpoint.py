"""Per-round checkpoints of a run: the global model and the round records so far.

Saved atomically after every completed round, so after a crash ``resume`` continues
from the last completed round: none lost, none applied twice.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from flwr.app import Array, ArrayRecord

from coordinator.results import RoundRecord, atomic_write_bytes


@dataclass
class Checkpoint:
    """State after round ``round`` completed."""

    round: int
    arrays: ArrayRecord
    rounds: list[RoundRecord]


class CheckpointStore:
    """One checkpoint file per run (``checkpoint.pt`` in the run's state folder)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def save(self, ckpt: Checkpoint) -> None:
        payload = {
            "round": ckpt.round,
            "arrays": {k: torch.from_numpy(v.numpy().copy()) for k, v in ckpt.arrays.items()},
            "rounds": [asdict(r) for r in ckpt.rounds],
        }
        buf = io.BytesIO()
        torch.save(payload, buf)
        atomic_write_bytes(self.path, buf.getvalue())

    def load(self) -> Checkpoint | None:
        if not self.path.exists():
            return None
        payload = torch.load(self.path, weights_only=True)
        arrays = ArrayRecord({k: Array(v.numpy()) for k, v in payload["arrays"].items()})
        rounds = [RoundRecord(**r) for r in payload["rounds"]]
        return Checkpoint(round=int(payload["round"]), arrays=arrays, rounds=rounds)
