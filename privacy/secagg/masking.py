"""The masking arithmetic of SecAgg(+): what a client adds and what the server removes.

Client i sends y_i = x_i + PRG(b_i) + Σ_{j ∈ N(i) ∩ U2} σ(i, j) · PRG(s_ij)  (mod 2^M)
with σ(i, j) = +1 if i < j else −1, b_i its self-mask seed and s_ij the key both ends
of the pair derive from their X25519 agreement (Bonawitz et al., CCS 2017, §4; Bell et
al., CCS 2020, §3). Over the survivors S the pairwise masks between survivors cancel,
so Σ_{i∈S} y_i = Σ_{i∈S} x_i + Σ_{i∈S} PRG(b_i) + Σ_{i∈S, d∈N(i)∩D} σ(i, d) · PRG(s_id),
where D are the clients that shared keys but sent no input. The server rebuilds b_i for
i ∈ S and the mask key of each d ∈ D from Shamir shares and subtracts both terms.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping

import numpy as np

from privacy.secagg.keys import (
    PROTOCOL_LABEL,
    PURPOSE_PAIR_MASK,
    PURPOSE_SELF_MASK,
    agree,
    agree_all,
    derive_key,
    pair_context,
)
from privacy.secagg.prg import DEFAULT_PRG, apply_masks
from privacy.secagg.shamir import SHARE_BYTES, decode_share, encode_share

_SHARE_PAYLOAD = struct.Struct(">QQ")


def pair_sign(me: int, peer: int) -> int:
    """σ(me, peer): +1 for the smaller id of the pair, −1 for the larger."""
    if me == peer:
        raise ValueError("a client has no pairwise mask with itself")
    return 1 if me < peer else -1


def pair_mask_key(
    private: bytes, peer_public: bytes, *, server_round: int, me: int, peer: int
) -> bytes:
    """The stream key of the pair (me, peer): HKDF of their X25519 secret."""
    return pair_mask_key_from_secret(
        agree(private, peer_public), server_round=server_round, me=me, peer=peer
    )


def pair_mask_keys(
    private: bytes, peer_publics: Mapping[int, bytes], *, server_round: int, me: int
) -> dict[int, bytes]:
    """:func:`pair_mask_key` for many peers of ``me`` at once (one key load)."""
    shared = agree_all(private, peer_publics)
    return {
        peer: pair_mask_key_from_secret(value, server_round=server_round, me=me, peer=peer)
        for peer, value in shared.items()
    }


def pair_mask_key_from_secret(shared: bytes, *, server_round: int, me: int, peer: int) -> bytes:
    """HKDF of an X25519 secret into the pair's stream key."""
    return derive_key(
        shared,
        purpose=PURPOSE_PAIR_MASK,
        context=pair_context(server_round=server_round, a=me, b=peer),
    )


def self_mask_key(seed: bytes, *, server_round: int, node_id: int) -> bytes:
    """The stream key of a client's self mask, from its secret seed b_i."""
    return derive_key(
        seed, purpose=PURPOSE_SELF_MASK, context=struct.pack(">QQ", server_round, node_id)
    )


def seed_commitment(seed: bytes, *, server_round: int, node_id: int) -> bytes:
    """SHA-256 commitment to b_i, sent with the shares: the server checks the seed it
    rebuilds, so inconsistent shares make the round fail instead of corrupting it."""
    return hashlib.sha256(
        PROTOCOL_LABEL + b"/seed-commitment/" + struct.pack(">QQ", server_round, node_id) + seed
    ).digest()


def mask_input(
    encoded: np.ndarray,
    *,
    node_id: int,
    self_key: bytes,
    pair_keys: Mapping[int, bytes],
    prg: str = DEFAULT_PRG,
) -> np.ndarray:
    """y = x + PRG(self_key) + Σ σ(node, peer)·PRG(pair_keys[peer]) mod 2^M (in place)."""
    terms = [(self_key, 1)] + [(key, pair_sign(node_id, peer)) for peer, key in pair_keys.items()]
    return apply_masks(encoded, terms, prg=prg)


def unmask_sum(
    masked_sum: np.ndarray,
    *,
    self_keys: Iterable[bytes],
    dropped_pairs: Iterable[tuple[int, int, bytes]],
    prg: str = DEFAULT_PRG,
) -> np.ndarray:
    """Remove the survivors' self masks and their masks with dropped clients (in place).

    ``dropped_pairs`` holds (survivor, dropped, pair key) for every edge between a
    survivor and a client that shared keys but sent no input.
    """
    terms = [(key, -1) for key in self_keys]
    terms += [(key, -pair_sign(survivor, dropped)) for survivor, dropped, key in dropped_pairs]
    return apply_masks(masked_sum, terms, prg=prg)


def pack_share_payload(*, sender: int, receiver: int, seed_share: int, key_share: int) -> bytes:
    """Plaintext of an encrypted share: ids, the self-seed share, the mask-key share."""
    return (
        _SHARE_PAYLOAD.pack(sender, receiver) + encode_share(seed_share) + encode_share(key_share)
    )


def unpack_share_payload(data: bytes, *, sender: int, receiver: int) -> tuple[int, int]:
    """(seed share, key share) from a decrypted payload; refuses one for other ids."""
    if len(data) != _SHARE_PAYLOAD.size + 2 * SHARE_BYTES:
        raise ValueError("malformed share payload")
    got_sender, got_receiver = _SHARE_PAYLOAD.unpack_from(data)
    if (got_sender, got_receiver) != (sender, receiver):
        raise ValueError("share payload names other clients")
    offset = _SHARE_PAYLOAD.size
    seed_share = decode_share(data[offset : offset + SHARE_BYTES])
    key_share = decode_share(data[offset + SHARE_BYTES :])
    return seed_share, key_share
