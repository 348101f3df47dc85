"""The ClientApp's side of secure aggregation (SecAgg+): four registered message actions.

``query.secagg_setup`` → ``query.secagg_share`` → ``train.secagg`` → ``query.secagg_unmask``
(the protocol steps themselves are pure functions in ``privacy.secagg.client``; this
module only moves them in and out of Flower messages and the node's ``Context``).
``train.secagg`` runs the ordinary train handler, turns its reply into the update
(trained weights − global model) and sends only that update clipped, quantized,
weighted by num-examples and masked: the plaintext weights and the weight never leave.
After the update come the fairness audit's counts and the site's measured energy
(``privacy.secagg.energy_slots``), summed under the same mask.

Pre-mask transforms (``pre_mask``) see each client's :class:`MaskInput` just before
clipping and quantization — the hook where distributed DP adds its noise share.
A refusal (honest-client check, a share that fails authentication) is an ``Error``
reply: the coordinator treats the client as dropped; nothing crashes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp

from edge_client.energy import masked_energy
from edge_client.fairness import start_model_counts
from edge_client.protocol import keys as k
from edge_client.protocol import secagg as sa
from privacy.secagg import client as protocol
from privacy.secagg.arrays import MaskInput, difference, update_pairs
from privacy.secagg.config import SecAggParams
from privacy.secagg.keys import ShareAuthenticationError
from privacy.secagg.quantize import encode_difference, encode_input, input_length, ring_dtype
from privacy.secagg.shamir import encode_share
from tasks.npy import npy_array

log = logging.getLogger(__name__)

STATE_BLOB = "round-state"  # the ClientRound, serialized, inside SECAGG_STATE

TrainHandler = Callable[[Message, Context], Message]
PreMaskTransform = Callable[[MaskInput, Context], MaskInput]
"""Maps a client's update (and weight) before clipping/quantization/masking."""


def _load(context: Context, record: ConfigRecord) -> protocol.ClientRound:
    stored = context.state.config_records.get(sa.SECAGG_STATE)
    if stored is None:
        raise protocol.ProtocolError("no secure-aggregation round in progress on this client")
    blob = stored.get(STATE_BLOB)
    if not isinstance(blob, bytes):
        raise protocol.ProtocolError("corrupt secure-aggregation state on this client")
    state = protocol.ClientRound.from_bytes(blob)
    if state.server_round != sa.int_value(record, sa.SA_ROUND):
        raise protocol.ProtocolError(
            f"message for round {record[sa.SA_ROUND]!r} but this client is in round "
            f"{state.server_round}"
        )
    return state


def _save(context: Context, state: protocol.ClientRound) -> None:
    context.state.config_records[sa.SECAGG_STATE] = ConfigRecord({STATE_BLOB: state.to_bytes()})


def _reply(message: Message, values: dict) -> Message:
    return Message(RecordDict({sa.SECAGG: ConfigRecord(values)}), reply_to=message)


def _refuse(message: Message, exc: Exception) -> Message:
    code = (
        sa.ERR_SECAGG_BAD_SHARE
        if isinstance(exc, ShareAuthenticationError)
        else sa.ERR_SECAGG_REFUSED
    )
    log.warning("secure aggregation: refusing %s: %s", message.metadata.message_type, exc)
    return Message(Error(code=code, reason=f"secagg: {exc}"), reply_to=message)


def handle_setup(message: Message, context: Context) -> Message:
    """Stage 1: fresh key pairs; reply with the two public keys."""
    record = message.content.config_records[sa.SECAGG]
    try:
        state = protocol.setup(
            node_id=int(context.node_id),
            server_round=sa.int_value(record, sa.SA_ROUND),
            params=SecAggParams(**sa.params_from_record(record)),
            graph_seed=sa.bytes_value(record, sa.SA_GRAPH_SEED),
            participants=protocol.unpack_ids(sa.bytes_value(record, sa.SA_PARTICIPANTS)),
        )
    except (protocol.ProtocolError, KeyError, ValueError) as exc:
        return _refuse(message, exc)
    _save(context, state)
    return _reply(message, {sa.SA_C_PUBLIC: state.c_public, sa.SA_S_PUBLIC: state.s_public})


def handle_share(message: Message, context: Context) -> Message:
    """Stage 2: encrypted shares of the self seed and mask key for each neighbour."""
    record = message.content.config_records[sa.SECAGG]
    try:
        state = _load(context, record)
        peers = sa.int_list(record, sa.SA_PEERS)
        keys = zip(
            sa.bytes_list(record, sa.SA_PEERS_C), sa.bytes_list(record, sa.SA_PEERS_S), strict=True
        )
        peer_keys = dict(zip(peers, keys, strict=True))
        ciphertexts, commitment = protocol.share_keys(state, peer_keys=peer_keys)
    except (protocol.ProtocolError, KeyError, ValueError) as exc:
        return _refuse(message, exc)
    _save(context, state)
    return _reply(
        message,
        {
            sa.SA_RECEIVERS: list(ciphertexts),
            sa.SA_CIPHERTEXTS: list(ciphertexts.values()),
            sa.SA_COMMITMENT: commitment,
        },
    )


def make_train_handler(
    train: TrainHandler, *, pre_mask: Sequence[PreMaskTransform] = ()
) -> TrainHandler:
    """Stage 3 around ``train``: open the shares (abort before training if any fails),
    train, then reply with only the masked, quantized, weighted update."""

    def handle_masked_train(message: Message, context: Context) -> Message:
        record = message.content.config_records[sa.SECAGG]
        try:
            state = _load(context, record)
            senders = sa.int_list(record, sa.SA_SENDERS)
            blobs = sa.bytes_list(record, sa.SA_CIPHERTEXTS)
            protocol.open_shares(state, ciphertexts=dict(zip(senders, blobs, strict=True)))
        except (protocol.ProtocolError, ShareAuthenticationError, KeyError, ValueError) as exc:
            context.state.config_records.pop(sa.SECAGG_STATE, None)
            return _refuse(message, exc)
        try:  # the fairness audit's counts of the received model, summed under the mask
            counts = start_model_counts(message, context)
        except ValueError as exc:
            return _refuse(message, exc)
        trained = train(message, context)
        if trained.has_error():
            return trained
        start = message.content.array_records[k.ARRAYS]
        pairs = update_pairs(trained.content.array_records[k.ARRAYS], start)
        weight = trained.content.metric_records[k.METRICS][k.NUM_EXAMPLES]
        if not isinstance(weight, int | float):
            return _refuse(message, ValueError("the train reply has no numeric num-examples"))
        item = _transformed(pairs, int(weight), state, pre_mask, context)
        # the site's measured energy (zeros when it measures none), summed under the mask
        extra = [*counts, *masked_energy(context, max_weight=state.params.max_weight)]
        try:
            encoded = _encode(pairs, item, int(weight), state, extra)
            masked = protocol.masked_input(state, encoded=encoded)
        except (protocol.ProtocolError, ValueError) as exc:
            return _refuse(message, exc)
        _save(context, state)
        content = RecordDict(
            {  # npy_array copies the masked vector: its scratch buffer is free again
                sa.SECAGG_MASKED: ArrayRecord({sa.SECAGG_VECTOR: npy_array(masked)}),
                sa.SECAGG: ConfigRecord({sa.SA_ROUND: state.server_round}),
            }
        )
        return Message(content, reply_to=message)

    return handle_masked_train


def handle_unmask(message: Message, context: Context) -> Message:
    """Stage 4: the seed shares of survivors and key shares of dropped neighbours."""
    record = message.content.config_records[sa.SECAGG]
    try:
        state = _load(context, record)
        seed_shares, key_shares = protocol.unmask(
            state,
            survivors=sa.int_list(record, sa.SA_SURVIVORS),
            dropped=sa.int_list(record, sa.SA_DROPPED),
        )
    except (protocol.ProtocolError, KeyError, ValueError) as exc:
        return _refuse(message, exc)
    _save(context, state)
    return _reply(
        message,
        {
            sa.SA_SEED_OWNERS: list(seed_shares),
            sa.SA_SEED_SHARES: [encode_share(v) for v in seed_shares.values()],
            sa.SA_KEY_OWNERS: list(key_shares),
            sa.SA_KEY_SHARES: [encode_share(v) for v in key_shares.values()],
        },
    )


def _transformed(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    weight: int,
    state: protocol.ClientRound,
    pre_mask: Sequence[PreMaskTransform],
    context: Context,
) -> MaskInput | None:
    """The client's update (trained − global) through the pre-mask transforms; ``None``
    when none is active (the update is then never built, see :func:`_encode`). A
    transform with an ``active(context)`` method that answers False is skipped: it
    would return the update unchanged."""
    pre_mask = [t for t in pre_mask if _active(t, context)]
    if not pre_mask:
        return None
    item = MaskInput(
        update=difference(pairs),
        weight=weight,
        clip=state.params.clip,
        participants=state.num_participants,
    )
    for transform in pre_mask:
        item = transform(item, context)
    return item


def _active(transform: PreMaskTransform, context: Context) -> bool:
    check = getattr(transform, "active", None)
    return check is None or bool(check(context))


def _encode(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    item: MaskInput | None,
    weight: int,
    state: protocol.ClientRound,
    counts: Sequence[int],
) -> np.ndarray:
    """The ring vector in this thread's scratch ring: ``item`` (a transformed update)
    clipped, quantized and weighted, or without one each block of trained − global
    quantized while in cache (``encode_difference``: the same integers)."""
    params = state.params
    if item is None:
        size = sum(a.size for a, _ in pairs)
        ring = _scratch_ring(input_length(size, len(counts)), params.modulus_bits)
        return encode_difference(pairs, weight=weight, params=params, out=ring, extra=counts)
    ring = _scratch_ring(input_length(item.update.size, len(counts)), params.modulus_bits)
    return encode_input(item.update, weight=item.weight, params=params, out=ring, extra=counts)


_scratch = threading.local()


def _scratch_ring(length: int, modulus_bits: int) -> np.ndarray:
    """This thread's buffer for a masked vector of ``length`` in Z_(2^M), reused from
    one call to the next (a simulation runs many clients in one process: fresh 8 MB
    pages per client cost more than quantizing into them). Never escapes a call: the
    reply carries a copy."""
    dtype = np.dtype(ring_dtype(modulus_bits))
    ring = getattr(_scratch, "ring", None)
    if ring is None or ring.dtype != dtype or ring.size != length:
        ring = _scratch.ring = np.empty(length, dtype=dtype)
    return ring


def register_secagg(
    client_app: ClientApp, *, train: TrainHandler, pre_mask: Sequence[PreMaskTransform] = ()
) -> ClientApp:
    """Register the four SecAgg+ actions on ``client_app``; ``train`` is the plain
    train handler, ``pre_mask`` the transforms applied to each update before masking."""
    client_app.query("secagg_setup")(handle_setup)
    client_app.query("secagg_share")(handle_share)
    client_app.train("secagg")(make_train_handler(train, pre_mask=pre_mask))
    client_app.query("secagg_unmask")(handle_unmask)
    return client_app
