"""The SecAgg+ wire contract: message types, record names, keys and their codecs.

Four stages, each its own message action: ``query.secagg_setup`` →
``query.secagg_share`` → ``train.secagg`` → ``query.secagg_unmask``. Every stage carries
a ConfigRecord :data:`SECAGG`; the masked input travels as array :data:`SECAGG_VECTOR`
of ArrayRecord :data:`SECAGG_MASKED` (uint32/uint64, Z_(2^M)). The codecs below read a
field of a received record or refuse it with ``ValueError`` (each end turns that into
its own refusal); the protocol's arithmetic lives in ``privacy.secagg``, the client's
handlers in ``edge_client.secagg_client``, the coordinator's exchange in
``coordinator.secagg_exchange``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Protocol, TypedDict

if TYPE_CHECKING:  # annotations only: naming the protocol's keys must not load Flower
    from flwr.app import ConfigRecord

# Message types of the protocol stages (the train stage wraps the plain train handler).
MT_SECAGG_SETUP: Final = "query.secagg_setup"
MT_SECAGG_SHARE: Final = "query.secagg_share"
MT_SECAGG_TRAIN: Final = "train.secagg"
MT_SECAGG_UNMASK: Final = "query.secagg_unmask"
# Record names.
SECAGG: Final = "secagg"
SECAGG_MASKED: Final = "secagg-masked"
SECAGG_VECTOR: Final = "y"
# Keys inside the SECAGG ConfigRecord.
SA_ROUND: Final = "round"
SA_GRAPH_SEED: Final = "graph-seed"  # bytes(32), drawn by the coordinator
SA_PARTICIPANTS: Final = "participants"  # bytes: the round's node ids, big-endian uint64
SA_PARAMS: Final = "params"  # [degree, threshold, bits, max-weight, modulus-bits]
SA_CLIP: Final = "clip"  # float, per-coordinate clipping bound R
SA_PRG: Final = "prg"  # str, mask generator: "aes128-ctr" | "chacha20"
SA_C_PUBLIC: Final = "c-public"  # X25519 public key for share encryption
SA_S_PUBLIC: Final = "s-public"  # X25519 public key for pairwise masks
SA_PEERS: Final = "peers"  # list[int]: neighbours whose keys follow
SA_PEERS_C: Final = "peers-c"
SA_PEERS_S: Final = "peers-s"
SA_RECEIVERS: Final = "receivers"  # list[int]: who each ciphertext is for
SA_SENDERS: Final = "senders"  # list[int]: who each ciphertext is from
SA_CIPHERTEXTS: Final = "ciphertexts"  # list[bytes]: AES-GCM share ciphertexts
SA_COMMITMENT: Final = "commitment"  # bytes(32): SHA-256 commitment to the self seed
SA_SURVIVORS: Final = "survivors"  # list[int]
SA_DROPPED: Final = "dropped"  # list[int]
SA_SEED_OWNERS: Final = "seed-owners"
SA_SEED_SHARES: Final = "seed-shares"
SA_KEY_OWNERS: Final = "key-owners"
SA_KEY_SHARES: Final = "key-shares"
# Metric of the coordinator's one synthetic reply: how many clients' updates it sums.
AGGREGATED_CLIENTS: Final = "aggregated-clients"
# Error codes of a client's refusal (its reply is an Error; it counts as dropped).
ERR_SECAGG_REFUSED: Final = 3101  # honest-client check failed / inconsistent request
ERR_SECAGG_BAD_SHARE: Final = 3102  # a neighbour's share failed AES-GCM authentication
# Client context state record (between stages).
SECAGG_STATE: Final = "secagg-state"


class ParamsFields(TypedDict):
    """The round parameters as sent with the setup message: the keyword arguments of
    ``privacy.secagg.config.SecAggParams`` (built by the receiver)."""

    degree: int
    threshold: int
    clip: float
    bits: int
    max_weight: int
    modulus_bits: int
    prg: str


class ParamsLike(Protocol):
    """What :func:`params_to_record` reads (``privacy.secagg.config.SecAggParams``)."""

    @property
    def degree(self) -> int: ...
    @property
    def threshold(self) -> int: ...
    @property
    def clip(self) -> float: ...
    @property
    def bits(self) -> int: ...
    @property
    def max_weight(self) -> int: ...
    @property
    def modulus_bits(self) -> int: ...
    @property
    def prg(self) -> str: ...


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


def params_from_record(record: ConfigRecord) -> ParamsFields:
    """The round parameters the coordinator sent with the setup message."""
    values = int_list(record, SA_PARAMS)
    if len(values) != 5:
        raise ValueError("secagg params must be [degree, threshold, bits, max-weight, modulus]")
    degree, threshold, bits, max_weight, modulus_bits = values
    clip, prg = record[SA_CLIP], record[SA_PRG]
    if not isinstance(clip, float) or not isinstance(prg, str):
        raise ValueError("secagg clip must be a float and prg a string")
    return ParamsFields(
        degree=degree,
        threshold=threshold,
        clip=clip,
        bits=bits,
        max_weight=max_weight,
        modulus_bits=modulus_bits,
        prg=prg,
    )


def params_to_record(params: ParamsLike) -> dict[str, list[int] | float | str]:
    """Inverse of :func:`params_from_record` (used by the coordinator)."""
    return {
        SA_PARAMS: [
            params.degree,
            params.threshold,
            params.bits,
            params.max_weight,
            params.modulus_bits,
        ],
        SA_CLIP: float(params.clip),
        SA_PRG: params.prg,
    }
