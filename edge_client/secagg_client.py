"""The ClientApp's side of secure aggregation (SecAgg+): four registered message actions.

``query.secagg_setup`` → ``query.secagg_share`` → ``train.secagg`` → ``query.secagg_unmask``
(the protocol steps themselves are pure functions in ``privacy.secagg.client``; this
module only moves them in and out of Flower messages and the node's ``Context``).
``train.secagg`` runs the ordinary train handler, turns its reply into the update
(trained weights − global model) and sends only that update clipped, quantized,
weighted by num-examples and masked: the plaintext weights and the weight never leave.

Pre-mask transforms (``pre_mask``) see each client's :class:`MaskInput` just before
clipping and quantization — the hook where distributed DP adds its noise share.
A refusal (honest-client check, a share that fails authentication) is an ``Error``
reply: the coordinator treats the client as dropped; nothing crashes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp

from edge_client import messages as k
from privacy.secagg import client as protocol
from privacy.secagg.arrays import MaskInput, update_between
from privacy.secagg.config import SecAggParams
from privacy.secagg.keys import ShareAuthenticationError
from privacy.secagg.quantize import encode_input
from privacy.secagg.shamir import encode_share

log = logging.getLogger(__name__)

STATE_BLOB = "round-state"  # the ClientRound, serialized, inside SECAGG_STATE

TrainHandler = Callable[[Message, Context], Message]
PreMaskTransform = Callable[[MaskInput, Context], MaskInput]
"""Maps a client's update (and weight) before clipping/quantization/masking."""


def int_value(record: ConfigRecord, key: str) -> int:
    """An int field of a protocol record, or ``ValueError``."""
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"secagg field {key!r} must be an integer")
    return value


def int_list(record: ConfigRecord, key: str) -> list[int]:
    """A list-of-ints field (an empty list is allowed)."""
    value = record[key]
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise ValueError(f"secagg field {key!r} must be a list of integers")
    return [int(v) for v in value]


def bytes_value(record: ConfigRecord, key: str) -> bytes:
    """A bytes field."""
    value = record[key]
    if not isinstance(value, bytes):
        raise ValueError(f"secagg field {key!r} must be bytes")
    return value


def bytes_list(record: ConfigRecord, key: str) -> list[bytes]:
    """A list-of-bytes field (an empty list is allowed)."""
    value = record[key]
    if not isinstance(value, list) or not all(isinstance(v, bytes) for v in value):
        raise ValueError(f"secagg field {key!r} must be a list of bytes")
    return [v for v in value if isinstance(v, bytes)]


def params_from_record(record: ConfigRecord) -> SecAggParams:
    """The round parameters the coordinator sent with the setup message."""
    values = int_list(record, k.SA_PARAMS)
    if len(values) != 5:
        raise ValueError("secagg params must be [degree, threshold, bits, max-weight, modulus]")
    degree, threshold, bits, max_weight, modulus_bits = values
    clip, prg = record[k.SA_CLIP], record[k.SA_PRG]
    if not isinstance(clip, float) or not isinstance(prg, str):
        raise ValueError("secagg clip must be a float and prg a string")
    return SecAggParams(
        degree=degree,
        threshold=threshold,
        clip=clip,
        bits=bits,
        max_weight=max_weight,
        modulus_bits=modulus_bits,
        prg=prg,
    )


def params_to_record(params: SecAggParams) -> dict[str, list[int] | float | str]:
    """Inverse of :func:`params_from_record` (used by the coordinator)."""
    return {
        k.SA_PARAMS: [
            params.degree,
            params.threshold,
            params.bits,
            params.max_weight,
            params.modulus_bits,
        ],
        k.SA_CLIP: float(params.clip),
        k.SA_PRG: params.prg,
    }


def _load(context: Context, record: ConfigRecord) -> protocol.ClientRound:
    stored = context.state.config_records.get(k.SECAGG_STATE)
    if stored is None:
        raise protocol.ProtocolError("no secure-aggregation round in progress on this client")
    blob = stored.get(STATE_BLOB)
    if not isinstance(blob, bytes):
        raise protocol.ProtocolError("corrupt secure-aggregation state on this client")
    state = protocol.ClientRound.from_bytes(blob)
    if state.server_round != int_value(record, k.SA_ROUND):
        raise protocol.ProtocolError(
            f"message for round {record[k.SA_ROUND]!r} but this client is in round "
            f"{state.server_round}"
        )
    return state


def _save(context: Context, state: protocol.ClientRound) -> None:
    context.state.config_records[k.SECAGG_STATE] = ConfigRecord({STATE_BLOB: state.to_bytes()})


def _reply(message: Message, values: dict) -> Message:
    return Message(RecordDict({k.SECAGG: ConfigRecord(values)}), reply_to=message)


def _refuse(message: Message, exc: Exception) -> Message:
    code = (
        k.ERR_SECAGG_BAD_SHARE
        if isinstance(exc, ShareAuthenticationError)
        else k.ERR_SECAGG_REFUSED
    )
    log.warning("secure aggregation: refusing %s: %s", message.metadata.message_type, exc)
    return Message(Error(code=code, reason=f"secagg: {exc}"), reply_to=message)


def handle_setup(message: Message, context: Context) -> Message:
    """Stage 1: fresh key pairs; reply with the two public keys."""
    record = message.content.config_records[k.SECAGG]
    try:
        state = protocol.setup(
            node_id=int(context.node_id),
            server_round=int_value(record, k.SA_ROUND),
            params=params_from_record(record),
            graph_seed=bytes_value(record, k.SA_GRAPH_SEED),
            participants=protocol.unpack_ids(bytes_value(record, k.SA_PARTICIPANTS)),
        )
    except (protocol.ProtocolError, KeyError, ValueError) as exc:
        return _refuse(message, exc)
    _save(context, state)
    return _reply(message, {k.SA_C_PUBLIC: state.c_public, k.SA_S_PUBLIC: state.s_public})


def handle_share(message: Message, context: Context) -> Message:
    """Stage 2: encrypted shares of the self seed and mask key for each neighbour."""
    record = message.content.config_records[k.SECAGG]
    try:
        state = _load(context, record)
        peers = int_list(record, k.SA_PEERS)
        keys = zip(bytes_list(record, k.SA_PEERS_C), bytes_list(record, k.SA_PEERS_S), strict=True)
        peer_keys = dict(zip(peers, keys, strict=True))
        ciphertexts, commitment = protocol.share_keys(state, peer_keys=peer_keys)
    except (protocol.ProtocolError, KeyError, ValueError) as exc:
        return _refuse(message, exc)
    _save(context, state)
    return _reply(
        message,
        {
            k.SA_RECEIVERS: list(ciphertexts),
            k.SA_CIPHERTEXTS: list(ciphertexts.values()),
            k.SA_COMMITMENT: commitment,
        },
    )


def make_train_handler(
    train: TrainHandler, *, pre_mask: Sequence[PreMaskTransform] = ()
) -> TrainHandler:
    """Stage 3 around ``train``: open the shares (abort before training if any fails),
    train, then reply with only the masked, quantized, weighted update."""

    def handle_masked_train(message: Message, context: Context) -> Message:
        record = message.content.config_records[k.SECAGG]
        try:
            state = _load(context, record)
            senders = int_list(record, k.SA_SENDERS)
            blobs = bytes_list(record, k.SA_CIPHERTEXTS)
            protocol.open_shares(state, ciphertexts=dict(zip(senders, blobs, strict=True)))
        except (protocol.ProtocolError, ShareAuthenticationError, KeyError, ValueError) as exc:
            context.state.config_records.pop(k.SECAGG_STATE, None)
            return _refuse(message, exc)
        trained = train(message, context)
        if trained.has_error():
            return trained
        start = message.content.array_records[k.ARRAYS]
        update = update_between(trained.content.array_records[k.ARRAYS], start)
        weight = trained.content.metric_records[k.METRICS][k.NUM_EXAMPLES]
        if not isinstance(weight, int | float):
            return _refuse(message, ValueError("the train reply has no numeric num-examples"))
        item = MaskInput(
            update=update,
            weight=int(weight),
            clip=state.params.clip,
            participants=len(state.participants),
        )
        for transform in pre_mask:
            item = transform(item, context)
        try:
            encoded = encode_input(item.update, weight=item.weight, params=state.params)
            masked = protocol.masked_input(state, encoded=encoded)
        except (protocol.ProtocolError, ValueError) as exc:
            return _refuse(message, exc)
        _save(context, state)
        content = RecordDict(
            {
                k.SECAGG_MASKED: ArrayRecord({k.SECAGG_VECTOR: Array(masked)}),
                k.SECAGG: ConfigRecord({k.SA_ROUND: state.server_round}),
            }
        )
        return Message(content, reply_to=message)

    return handle_masked_train


def handle_unmask(message: Message, context: Context) -> Message:
    """Stage 4: the seed shares of survivors and key shares of dropped neighbours."""
    record = message.content.config_records[k.SECAGG]
    try:
        state = _load(context, record)
        seed_shares, key_shares = protocol.unmask(
            state,
            survivors=int_list(record, k.SA_SURVIVORS),
            dropped=int_list(record, k.SA_DROPPED),
        )
    except (protocol.ProtocolError, KeyError, ValueError) as exc:
        return _refuse(message, exc)
    _save(context, state)
    return _reply(
        message,
        {
            k.SA_SEED_OWNERS: list(seed_shares),
            k.SA_SEED_SHARES: [encode_share(v) for v in seed_shares.values()],
            k.SA_KEY_OWNERS: list(key_shares),
            k.SA_KEY_SHARES: [encode_share(v) for v in key_shares.values()],
        },
    )


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
