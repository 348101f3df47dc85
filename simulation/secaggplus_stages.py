"""Where a device may drop out of a third-party app's SecAgg+ round and the round survive.

Flower's ``SecAggPlusWorkflow`` (with ``secaggplus_mod`` at the clients) runs four
stages per round: setup, share keys, collect masked vectors, unmask. A client lost
after it has shared its keys is what the protocol is built for: its neighbours hold
shares of its secret and the server removes its mask. A client lost *before* that stays
in the workflow's ``sampled_node_ids``, so in the unmask stage its neighbours are asked
for shares they never received and fail with ``KeyError`` in ``secaggplus_mod._unmask``
(Flower's own behaviour; fl-dp-sa with dropouts halts every round).

So the simulated fleet (``simulation/fleet.py``) lets a sampled device finish setup and
key sharing, and a device drawn to drop out then drops out at its next message instead:
the masked-vector stage, where Flower's workflow handles it. This module only reads
the stage Flower's own wire constants put into the message; it changes nothing.
"""

from __future__ import annotations

from flwr.app import Message
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

BEFORE_KEYS_SHARED = frozenset({Stage.SETUP, Stage.SHARE_KEYS})


def can_drop_out(message: Message) -> bool:
    """Whether a device may be lost at ``message`` without breaking the round: any
    message but a SecAgg+ setup or key-sharing one."""
    if not message.has_content():
        return True
    record = message.content.config_records.get(RECORD_KEY_CONFIGS)
    return record is None or record.get(Key.STAGE) not in BEFORE_KEYS_SHARED
