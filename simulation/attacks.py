"""The attack harness: some simulated clients send poisoned updates.

``--attack KIND --attackers FRACTION`` makes ``round(FRACTION · clients)`` clients —
chosen from the run's seed, the same in every engine and every round — attack:

- ``sign-flip``: send the negated update, ``g − (w − g)`` (Damaskinos et al.;
  the "reversed gradient" of Blanchard et al. 2017 / Li et al. 2019 RSA).
- ``scale:F``: send ``g + F·(w − g)`` (boosting, Bhagoji et al. 2019; F < 0 flips).
- ``gaussian:S``: replace the update with i.i.d. ``N(0, S²)`` noise (Blanchard et al.
  2017's Gaussian Byzantine worker).
- ``label-flip``: train honestly on data whose labels are flipped,
  ``y → C − 1 − y`` (Tolpegin et al., ESORICS 2020): the attacker's *data* changes.

It is a Flower ClientApp mod (:func:`attack_mod`) that reads ``attack``/``attackers``
from the run config, so the unchanged ClientApp runs under it in any engine.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

import numpy as np
from numpy.typing import NDArray

from edge_client.protocol import keys as k

if TYPE_CHECKING:  # Flower and torch load when an attack runs, not when one is validated
    from flwr.app import Context, Message
    from flwr.clientapp.typing import ClientAppCallable

AttackKind = Literal["sign-flip", "scale", "gaussian", "label-flip"]


@dataclass(frozen=True)
class AttackSpec:
    """A parsed ``--attack`` value."""

    kind: AttackKind
    value: float = 0.0

    @classmethod
    def parse(cls, text: str) -> AttackSpec:
        name, _, arg = text.strip().partition(":")
        if name in ("sign-flip", "label-flip") and not arg:
            return cls(name)  # type: ignore[arg-type]
        if name in ("scale", "gaussian"):
            try:
                value = float(arg)
            except ValueError:
                value = math.nan
            if not math.isfinite(value) or (name == "gaussian" and value <= 0):
                example = "scale:-4" if name == "scale" else "gaussian:0.5"
                raise ValueError(f"attack {text!r} needs a number, e.g. --attack {example}")
            return cls(name, value)  # type: ignore[arg-type]
        raise ValueError(
            f"unknown attack {text!r}; use sign-flip, scale:F, gaussian:S or label-flip"
        )

    def __str__(self) -> str:
        return (
            self.kind if self.kind in ("sign-flip", "label-flip") else f"{self.kind}:{self.value:g}"
        )


def validate_attackers(fraction: float) -> None:
    """``--attackers`` must be a fraction in [0, 1)."""
    if not (0.0 <= fraction < 1.0 and math.isfinite(fraction)):
        raise ValueError("--attackers must be a fraction in [0, 1), e.g. 0.2")


@lru_cache(maxsize=64)
def attacker_partitions(*, num_clients: int, fraction: float, seed: int) -> frozenset[int]:
    """The ``round(fraction · num_clients)`` attacking partition ids, fixed by ``seed``."""
    validate_attackers(fraction)
    count = round(fraction * num_clients)
    rng = np.random.default_rng([seed, 0xA77AC])
    return frozenset(int(i) for i in rng.permutation(num_clients)[:count])


def poison_update(
    spec: AttackSpec,
    *,
    trained: Mapping[str, NDArray],
    global_arrays: Mapping[str, NDArray],
    rng: np.random.Generator,
) -> dict[str, NDArray]:
    """The weights a model-poisoning attacker sends instead of ``trained``."""
    out: dict[str, NDArray] = {}
    for name, w in trained.items():
        g = global_arrays[name]
        if not np.issubdtype(w.dtype, np.floating):
            out[name] = w
        elif spec.kind == "sign-flip":
            out[name] = (2 * g - w).astype(w.dtype)
        elif spec.kind == "scale":
            out[name] = (g + spec.value * (w - g)).astype(w.dtype)
        elif spec.kind == "gaussian":
            out[name] = (g + rng.normal(0.0, spec.value, size=w.shape)).astype(w.dtype)
        else:
            out[name] = w
    return out


def flip_labels(y: NDArray, num_classes: int) -> NDArray:
    """``y → C − 1 − y``: every label becomes a wrong one (for C ≥ 2)."""
    return (num_classes - 1 - y).astype(y.dtype)


def _train_on_flipped_labels(message: Message, context: Context) -> Message:
    """The honest train handler's steps, on the client's data with flipped labels."""
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

    from edge_client.app import load_client_data
    from edge_client.settings import ClientSettings
    from tasks import get_task, reported_loss, train_local

    settings = ClientSettings.from_message(context, message.content.config_records[k.CONFIG])
    data = load_client_data(settings)
    task = get_task(settings.task)
    model = task.build_model()
    model.load_state_dict(message.content.array_records[k.ARRAYS].to_torch_state_dict())
    result = train_local(
        model,
        data.x_train,
        flip_labels(data.y_train, task.num_classes),
        epochs=settings.local_epochs,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        seed=settings.train_seed,
        proximal_mu=settings.proximal_mu,
        momentum=settings.momentum,
    )
    content = RecordDict(
        {
            k.ARRAYS: ArrayRecord(model.state_dict()),
            k.METRICS: MetricRecord(
                {
                    k.NUM_EXAMPLES: result.num_examples,
                    k.TRAIN_LOSS: reported_loss(result.num_examples, result.loss),
                }
            ),
        }
    )
    return Message(content=content, reply_to=message)


def is_attacker(context: Context) -> AttackSpec | None:
    """This client's attack, or ``None`` if it is honest (or no attack is set)."""
    text = str(context.run_config.get(k.RC_ATTACK, "") or "")
    if not text:
        return None
    fraction = float(context.run_config.get(k.RC_ATTACKERS, 0.0))  # type: ignore[arg-type]
    num_clients = int(context.node_config.get(k.NC_NUM_PARTITIONS, 0))  # type: ignore[arg-type]
    partition = int(context.node_config.get(k.NC_PARTITION_ID, -1))  # type: ignore[arg-type]
    seed = int(context.run_config.get(k.RC_SEED, 0))  # type: ignore[arg-type]
    chosen = attacker_partitions(num_clients=num_clients, fraction=fraction, seed=seed)
    return AttackSpec.parse(text) if partition in chosen else None


def attack_mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """ClientApp mod: attacking clients poison their train replies (or their data)."""
    spec = is_attacker(context) if message.metadata.message_type.startswith("train") else None
    if spec is None:
        return call_next(message, context)
    if spec.kind == "label-flip":
        return _train_on_flipped_labels(message, context)
    reply = call_next(message, context)
    if reply.has_error():
        return reply
    trained_record = reply.content.array_records[k.ARRAYS]
    global_record = message.content.array_records[k.ARRAYS]
    server_round = int(message.content.config_records[k.CONFIG].get(k.SERVER_ROUND, 0))  # type: ignore[arg-type]
    seed = int(context.run_config.get(k.RC_SEED, 0))  # type: ignore[arg-type]
    rng = np.random.default_rng([seed, server_round, context.node_id, 0xBAD])
    poisoned = poison_update(
        spec,
        trained={name: a.numpy() for name, a in trained_record.items()},
        global_arrays={name: a.numpy() for name, a in global_record.items()},
        rng=rng,
    )
    from flwr.app import Array, ArrayRecord

    reply.content.array_records[k.ARRAYS] = ArrayRecord(
        {name: Array(np.ascontiguousarray(poisoned[name])) for name in trained_record}
    )
    return reply
