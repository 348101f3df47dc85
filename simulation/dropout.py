"""Simulated client dropouts at a chosen protocol stage (``--dropout P --dropout-stage S``).

A ClientApp mod: a client chosen to drop in a round answers the message of the chosen
stage — and every later message of that round — with the error a SuperLink returns for
an unreachable node, without running anything. The coordinator sees exactly what it
sees when a device vanishes: no usable reply.

- ``after-key-share``: the client advertised its keys and sent its encrypted shares,
  then vanished before sending its (masked) update — the coordinator must recover its
  pairwise masks from its neighbours' shares. Without secure aggregation the client
  simply never returns its update.
- ``after-masked-input``: the client sent its masked update, then vanished before the
  unmasking stage — its update counts, but it cannot help unmask. Without secure
  aggregation there is no later stage, so nothing is dropped.

Who drops is a function of (seed, round, client) only: every engine, and a run with
and without secure aggregation, drop the same clients. Simulation randomness, not a
secret: numpy's generator is fine here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Literal, get_args

import numpy as np

if TYPE_CHECKING:
    from flwr.app import Context, Message
    from flwr.clientapp.typing import ClientAppCallable

from edge_client.protocol import keys as k
from edge_client.protocol import secagg as sa

DropoutStage = Literal["after-key-share", "after-masked-input"]
DROPOUT_STAGES: tuple[str, ...] = get_args(DropoutStage)

RC_DROPOUT: Final = "dropout"  # run-config key: probability a client drops in a round
RC_DROPOUT_STAGE: Final = "dropout-stage"  # run-config key: one of DROPOUT_STAGES

# Message types a dropped client no longer answers, per stage.
_SILENT: dict[str, frozenset[str]] = {
    "after-key-share": frozenset({"train", sa.MT_SECAGG_TRAIN, sa.MT_SECAGG_UNMASK}),
    "after-masked-input": frozenset({sa.MT_SECAGG_UNMASK}),
}


def check_dropout(rate: float, stage: str) -> None:
    """Refuse a dropout setting that cannot be simulated, naming the flag."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"--dropout {rate} must be in [0, 1)")
    if stage not in DROPOUT_STAGES:
        raise ValueError(f"--dropout-stage {stage!r}: choose one of {', '.join(DROPOUT_STAGES)}")


def drops_out(*, seed: int, server_round: int, client: int, rate: float) -> bool:
    """Whether ``client`` drops in ``server_round`` (independent per client and round)."""
    if rate <= 0.0:
        return False
    return bool(np.random.default_rng([seed, server_round, client, 0xD809]).random() < rate)


def _round_of(message: Message) -> int:
    """The server round a message belongs to (protocol record, train config, group)."""
    for name, key in ((sa.SECAGG, sa.SA_ROUND), (k.CONFIG, k.SERVER_ROUND)):
        record = message.content.config_records.get(name)
        value = record.get(key) if record is not None else None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    try:
        return int(message.metadata.group_id)
    except ValueError:
        return 0


def dropout_mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """ClientApp mod: withhold the replies of this round's dropped clients."""
    rc = context.run_config
    rate = float(rc.get(RC_DROPOUT, 0.0))  # type: ignore[arg-type]
    if rate <= 0.0:
        return call_next(message, context)
    stage = str(rc.get(RC_DROPOUT_STAGE, "after-key-share"))
    if message.metadata.message_type not in _SILENT.get(stage, frozenset()):
        return call_next(message, context)
    nc = context.node_config
    client = int(nc.get(k.NC_PARTITION_ID, context.node_id))  # type: ignore[arg-type]
    seed = int(rc.get(k.RC_SEED, 0))  # type: ignore[arg-type]
    if not drops_out(seed=seed, server_round=_round_of(message), client=client, rate=rate):
        return call_next(message, context)
    reason = f"simulated dropout ({stage}) of client {client}"
    from flwr.app import Error, Message  # here: validating --dropout must not load Flower
    from flwr.common.constant import ErrorCode

    return Message(Error(code=ErrorCode.NODE_UNAVAILABLE, reason=reason), reply_to=message)
