"""A client's side of one SecAgg+ round, as pure steps on an explicit state.

Stages (Bonawitz et al., CCS 2017; Bell et al., CCS 2020):

1. :func:`setup` — fresh X25519 key pairs ``c`` (share encryption) and ``s`` (masks);
   the client derives its neighbours from the coordinator's public graph seed.
2. :func:`share_keys` — a fresh self-mask seed b; Shamir shares of b and of the
   ``s`` private key for each neighbour and itself (threshold T of K+1), each
   neighbour's pair encrypted under AES-GCM; a commitment to b.
3. :func:`open_shares` then :func:`masked_input` — open the neighbours' shares (any
   failure aborts: the client is then treated as dropped), and mask the encoded update.
4. :func:`unmask` — reveal, per neighbour, the seed share of a survivor or the key
   share of a dropped client, never both for the same neighbour, and nothing at all
   when fewer than T of its share holders survived.

Every refusal raises :class:`ProtocolError` (or :class:`ShareAuthenticationError`); the
state is what the ClientApp keeps in its ``Context`` between messages.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from privacy.secagg.config import SecAggParams
from privacy.secagg.graph import neighbours_of
from privacy.secagg.keys import (
    KEY_BYTES,
    PURPOSE_SHARE,
    ShareAuthenticationError,
    agree_all,
    decrypt,
    derive_key,
    encrypt,
    generate_keypair,
    pair_context,
    share_aad,
)
from privacy.secagg.masking import (
    mask_input,
    pack_share_payload,
    pair_mask_keys,
    seed_commitment,
    self_mask_key,
    unpack_share_payload,
)
from privacy.secagg.prg import PRGS
from privacy.secagg.shamir import SHARE_BYTES, decode_share, encode_share, split_secret

SEED = "seed"
KEY = "key"


class ProtocolError(Exception):
    """The client refuses a protocol step (inconsistent or unsafe request)."""


@dataclass
class ClientRound:
    """Everything a client remembers between the stages of one round.

    ``peers_s`` holds the mask public keys of the neighbours that advertised keys and
    ``peer_share_keys`` the AES-GCM keys agreed with them (used in both directions);
    ``held_seed``/``held_key`` the shares of neighbours' secrets this client holds;
    ``revealed`` what it has disclosed per owner (``"seed"`` or ``"key"``);
    ``num_participants`` how many clients the round started with (the list itself is
    needed only at setup, to find the neighbours).
    """

    node_id: int
    server_round: int
    params: SecAggParams
    num_participants: int
    neighbours: tuple[int, ...]
    c_private: bytes
    c_public: bytes
    s_private: bytes
    s_public: bytes
    stage: str = "setup"
    self_seed: bytes = b""
    peer_share_keys: dict[int, bytes] = field(default_factory=dict)
    peers_s: dict[int, bytes] = field(default_factory=dict)
    own_seed_share: int = 0
    own_key_share: int = 0
    held_seed: dict[int, int] = field(default_factory=dict)
    held_key: dict[int, int] = field(default_factory=dict)
    revealed: dict[int, str] = field(default_factory=dict)

    # -- persistence (the ClientApp stores this in its Context between messages) -----
    def to_dict(self) -> dict[str, Any]:
        """Flat values that a Flower ConfigRecord can hold; lists are packed into bytes
        (ids as big-endian uint64, keys as 32-byte and shares as 66-byte blocks)."""
        peers = list(self.peers_s)
        held = list(self.held_seed)
        return {
            "node-id": self.node_id,
            "round": self.server_round,
            "params": [
                self.params.degree,
                self.params.threshold,
                self.params.bits,
                self.params.max_weight,
                self.params.modulus_bits,
            ],
            "clip": self.params.clip,
            "prg": self.params.prg,
            "participants": self.num_participants,
            "neighbours": pack_ids(self.neighbours),
            "c-private": self.c_private,
            "c-public": self.c_public,
            "s-private": self.s_private,
            "s-public": self.s_public,
            "stage": self.stage,
            "self-seed": self.self_seed,
            "peers": pack_ids(peers),
            "peer-share-keys": b"".join(self.peer_share_keys.get(p, b"") for p in peers),
            "peers-s": b"".join(self.peers_s[p] for p in peers),
            "own-shares": encode_share(self.own_seed_share) + encode_share(self.own_key_share),
            "held": pack_ids(held),
            "held-seed": b"".join(encode_share(self.held_seed[p]) for p in held),
            "held-key": b"".join(encode_share(self.held_key[p]) for p in held),
            "revealed": pack_ids(list(self.revealed)),
            "revealed-kind": "".join(kind[0] for kind in self.revealed.values()),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClientRound:
        """Inverse of :meth:`to_dict`."""
        degree, threshold, bits, max_weight, modulus_bits = (int(v) for v in data["params"])
        params = SecAggParams(
            degree=degree,
            threshold=threshold,
            clip=float(data["clip"]),
            bits=bits,
            max_weight=max_weight,
            modulus_bits=modulus_bits,
            prg=str(data["prg"]),
        )
        peers = unpack_ids(data["peers"])
        held = unpack_ids(data["held"])
        own = _blocks(data["own-shares"], SHARE_BYTES)
        kinds = {"s": SEED, "k": KEY}
        return cls(
            node_id=int(data["node-id"]),
            server_round=int(data["round"]),
            params=params,
            num_participants=int(data["participants"]),
            neighbours=tuple(unpack_ids(data["neighbours"])),
            c_private=bytes(data["c-private"]),
            c_public=bytes(data["c-public"]),
            s_private=bytes(data["s-private"]),
            s_public=bytes(data["s-public"]),
            stage=str(data["stage"]),
            self_seed=bytes(data["self-seed"]),
            peer_share_keys=dict(
                zip(peers, _blocks(data["peer-share-keys"], KEY_BYTES), strict=False)
            ),  # empty once the secrets are forgotten
            peers_s=dict(zip(peers, _blocks(data["peers-s"], KEY_BYTES), strict=True)),
            own_seed_share=decode_share(own[0]),
            own_key_share=decode_share(own[1]),
            held_seed={
                p: decode_share(v)
                for p, v in zip(held, _blocks(data["held-seed"], SHARE_BYTES), strict=True)
            },
            held_key={
                p: decode_share(v)
                for p, v in zip(held, _blocks(data["held-key"], SHARE_BYTES), strict=True)
            },
            revealed={
                owner: kinds[c]
                for owner, c in zip(
                    unpack_ids(data["revealed"]), str(data["revealed-kind"]), strict=True
                )
            },
        )

    def to_bytes(self) -> bytes:
        """The state as one JSON document (bytes base64-encoded): one record entry."""
        doc = {
            key: {"b64": base64.b64encode(v).decode()} if isinstance(v, bytes) else v
            for key, v in self.to_dict().items()
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> ClientRound:
        """Inverse of :meth:`to_bytes`."""
        doc = json.loads(data)
        return cls.from_dict(
            {
                key: base64.b64decode(v["b64"]) if isinstance(v, dict) else v
                for key, v in doc.items()
            }
        )

    def forget_secrets(self) -> None:
        """Drop the private keys and the seed once they can no longer be needed."""
        self.c_private = self.s_private = self.self_seed = b""
        self.peer_share_keys = {}


def check_params(params: SecAggParams, *, num_participants: int) -> None:
    """A client's own sanity check of the parameters the coordinator sent."""
    if num_participants < 3:
        raise ProtocolError(f"only {num_participants} participants; at least 3 are needed")
    if not 1 <= params.degree <= num_participants - 1:
        raise ProtocolError(f"degree {params.degree} is impossible with {num_participants}")
    if not 2 <= params.threshold <= params.degree + 1:
        raise ProtocolError(f"threshold {params.threshold} outside [2, {params.degree + 1}]")
    if params.modulus_bits not in (32, 64) or not 2 <= params.bits <= 32:
        raise ProtocolError("unsupported modulus or quantization bits")
    if params.prg not in PRGS:
        raise ProtocolError(f"unknown mask generator {params.prg!r}")
    if not params.clip > 0 or params.max_weight < 1:
        raise ProtocolError("clip and max-weight must be positive")


def setup(
    *,
    node_id: int,
    server_round: int,
    params: SecAggParams,
    graph_seed: bytes,
    participants: Sequence[int],
) -> ClientRound:
    """Stage 1: fresh key pairs and this client's neighbours from the public seed."""
    check_params(params, num_participants=len(participants))
    if node_id not in participants:
        raise ProtocolError("this client is not among the round's participants")
    if len(graph_seed) != KEY_BYTES:
        raise ProtocolError("the graph seed must be 32 bytes")
    try:
        neighbours = neighbours_of(node_id, participants, degree=params.degree, seed=graph_seed)
    except ValueError as exc:
        raise ProtocolError(str(exc)) from None
    c, s = generate_keypair(), generate_keypair()
    return ClientRound(
        node_id=node_id,
        server_round=server_round,
        params=params,
        num_participants=len(participants),
        neighbours=neighbours,
        c_private=c.private,
        c_public=c.public,
        s_private=s.private,
        s_public=s.public,
    )


def share_keys(
    state: ClientRound, *, peer_keys: Mapping[int, tuple[bytes, bytes]]
) -> tuple[dict[int, bytes], bytes]:
    """Stage 2: encrypted shares for each neighbour that advertised keys, and the
    commitment to the self-mask seed. ``peer_keys`` maps neighbour → (c_pk, s_pk)."""
    _expect(state, "setup")
    strangers = set(peer_keys) - set(state.neighbours)
    if strangers:
        raise ProtocolError(f"keys of non-neighbours {sorted(strangers)[:5]} were routed here")
    holders = len(peer_keys) + 1
    if holders < state.params.threshold:
        raise ProtocolError(
            f"only {holders} share holders, below the threshold {state.params.threshold}"
        )
    own = {state.c_public, state.s_public}
    for peer, (c_pk, s_pk) in peer_keys.items():
        if len(c_pk) != KEY_BYTES or len(s_pk) != KEY_BYTES or own & {c_pk, s_pk}:
            raise ProtocolError(f"invalid public keys for neighbour {peer}")
    peers = sorted(peer_keys)
    order = [*peers, state.node_id]
    xs = [p + 1 for p in order]
    state.self_seed = os.urandom(KEY_BYTES)
    seed_shares = split_secret(state.self_seed, xs=xs, threshold=state.params.threshold)
    key_shares = split_secret(state.s_private, xs=xs, threshold=state.params.threshold)
    state.peer_share_keys = _share_keys(state, {p: peer_keys[p][0] for p in peers})
    ciphertexts: dict[int, bytes] = {}
    for peer, seed_share, key_share in zip(peers, seed_shares, key_shares, strict=False):
        s_pk = peer_keys[peer][1]
        key = state.peer_share_keys[peer]
        payload = pack_share_payload(
            sender=state.node_id, receiver=peer, seed_share=seed_share, key_share=key_share
        )
        aad = share_aad(server_round=state.server_round, sender=state.node_id, receiver=peer)
        ciphertexts[peer] = encrypt(key, payload, aad=aad)
        state.peers_s[peer] = s_pk
    state.own_seed_share, state.own_key_share = seed_shares[-1], key_shares[-1]
    state.stage = "shared"
    commitment = seed_commitment(
        state.self_seed, server_round=state.server_round, node_id=state.node_id
    )
    return ciphertexts, commitment


def open_shares(state: ClientRound, *, ciphertexts: Mapping[int, bytes]) -> None:
    """Stage 3a: decrypt and keep the neighbours' shares; any failure aborts the round
    for this client (Bonawitz et al. §4): it is then treated as dropped."""
    _expect(state, "shared")
    strangers = set(ciphertexts) - set(state.peer_share_keys)
    if strangers:
        raise ProtocolError(f"shares from clients {sorted(strangers)[:5]} that are not peers")
    if len(ciphertexts) + 1 < state.params.threshold:
        raise ProtocolError(
            f"only {len(ciphertexts)} neighbours shared keys, below the threshold "
            f"{state.params.threshold} - 1"
        )
    held_seed, held_key = {}, {}
    for sender, blob in ciphertexts.items():
        key = state.peer_share_keys[sender]
        aad = share_aad(server_round=state.server_round, sender=sender, receiver=state.node_id)
        payload = decrypt(key, blob, aad=aad)
        try:
            seed_share, key_share = unpack_share_payload(
                payload, sender=sender, receiver=state.node_id
            )
        except ValueError as exc:
            raise ShareAuthenticationError(f"share from {sender}: {exc}") from None
        held_seed[sender], held_key[sender] = seed_share, key_share
    state.held_seed, state.held_key = held_seed, held_key
    state.stage = "opened"


def masked_input(state: ClientRound, *, encoded: np.ndarray) -> np.ndarray:
    """Stage 3b (after :func:`open_shares`): y = encoded + self mask + pairwise masks
    with the neighbours whose shares it holds — exactly its neighbours in U2 — mod 2^M.
    ``encoded`` (see ``quantize.encode_input``) is masked in place."""
    _expect(state, "opened")
    if encoded.dtype.itemsize * 8 != state.params.modulus_bits:
        raise ProtocolError("the encoded input does not match the round's modulus")
    pair_keys = pair_mask_keys(
        state.s_private,
        {peer: state.peers_s[peer] for peer in sorted(state.held_seed)},
        server_round=state.server_round,
        me=state.node_id,
    )
    self_key = self_mask_key(
        state.self_seed, server_round=state.server_round, node_id=state.node_id
    )
    masked = mask_input(
        encoded,
        node_id=state.node_id,
        self_key=self_key,
        pair_keys=pair_keys,
        prg=state.params.prg,
    )
    state.stage = "masked"
    return masked


def unmask(
    state: ClientRound, *, survivors: Collection[int], dropped: Collection[int]
) -> tuple[dict[int, int], dict[int, int]]:
    """Stage 4: (seed shares of surviving owners, key shares of dropped owners).

    Honest-client checks: the two lists must be disjoint and list this client as a
    survivor; at least T of this client's share holders (itself and the neighbours
    whose shares it holds) must have survived; and for no owner is the other kind of
    share ever released, even across repeated requests.
    """
    if state.stage not in ("masked", "unmasked"):
        raise ProtocolError(f"unmask request in stage {state.stage!r}")
    survivors_set, dropped_set = set(survivors), set(dropped)
    if survivors_set & dropped_set:
        raise ProtocolError("a client is listed both as survivor and as dropped")
    if state.node_id not in survivors_set:
        raise ProtocolError("this client sent its input but is not listed as a survivor")
    mine = set(state.held_seed) | {state.node_id}
    alive = mine & survivors_set
    if len(alive) < state.params.threshold:
        raise ProtocolError(
            f"only {len(alive)} of this client's share holders survived, below the "
            f"threshold {state.params.threshold}; refusing to unmask"
        )
    wanted = {owner: SEED for owner in alive} | {o: KEY for o in mine & dropped_set}
    for owner, kind in wanted.items():
        if state.revealed.get(owner, kind) != kind:
            raise ProtocolError(
                f"refusing to reveal the {kind} share of {owner}: its "
                f"{state.revealed[owner]} share was already revealed"
            )
    seed_out: dict[int, int] = {}
    key_out: dict[int, int] = {}
    for owner, kind in wanted.items():
        if kind == SEED:
            seed_out[owner] = (
                state.own_seed_share if owner == state.node_id else state.held_seed[owner]
            )
        else:
            key_out[owner] = (
                state.own_key_share if owner == state.node_id else state.held_key[owner]
            )
        state.revealed[owner] = kind
    state.stage = "unmasked"
    state.forget_secrets()
    return seed_out, key_out


def _share_keys(state: ClientRound, peer_publics: Mapping[int, bytes]) -> dict[int, bytes]:
    """The AES-GCM key shared with each peer (from the ``c`` key pairs)."""
    try:
        secrets_ = agree_all(state.c_private, peer_publics)
    except ValueError as exc:
        raise ProtocolError(f"bad public key among neighbours: {exc}") from None
    return {
        peer: derive_key(
            shared,
            purpose=PURPOSE_SHARE,
            context=pair_context(server_round=state.server_round, a=state.node_id, b=peer),
        )
        for peer, shared in secrets_.items()
    }


def pack_ids(ids: Sequence[int]) -> bytes:
    """Node ids as big-endian uint64s (a compact list for records and messages)."""
    return np.asarray(list(ids), dtype=">u8").tobytes()


def unpack_ids(data: bytes) -> list[int]:
    """Inverse of :func:`pack_ids`."""
    if len(data) % 8:
        raise ValueError("packed node ids must be a multiple of 8 bytes")
    return np.frombuffer(data, dtype=">u8").tolist()  # type: ignore[no-any-return]


def _blocks(data: bytes, size: int) -> list[bytes]:
    data = bytes(data)
    if len(data) % size:
        raise ValueError("corrupt secure-aggregation state")
    return [data[i : i + size] for i in range(0, len(data), size)]


def _expect(state: ClientRound, stage: str) -> None:
    if state.stage != stage:
        raise ProtocolError(f"request for stage after {stage!r} while in {state.stage!r}")
