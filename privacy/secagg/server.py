"""The coordinator's side of one SecAgg+ round, as pure steps on an explicit state.

The coordinator never holds a secret of its own: it draws the public graph seed,
routes public keys and encrypted shares between neighbours, adds the masked inputs,
and finally rebuilds from Shamir shares exactly the secrets the protocol lets it
have — the self-mask seed b_i of every survivor and the mask key of every client that
shared keys but sent no input — to remove the masks that did not cancel.
Rebuilt secrets are checked (seed against the client's SHA-256 commitment, key against
its advertised public key): inconsistent shares make the round fail, never corrupt it.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from privacy.secagg.config import SecAggConfig, SecAggParams
from privacy.secagg.graph import Graph, neighbour_graph
from privacy.secagg.keys import KEY_BYTES, public_key_of
from privacy.secagg.masking import pair_mask_keys, seed_commitment, self_mask_key, unmask_sum
from privacy.secagg.quantize import input_length, ring_dtype
from privacy.secagg.shamir import reconstruct_secret


class UnmaskError(Exception):
    """The sum cannot be recovered (too few shares, inconsistent shares): the round fails."""


@dataclass
class ServerRound:
    """What the coordinator knows during one round (all of it public or masked).

    ``advertised`` is U1 (clients that sent keys), ``shared`` U2 (clients that sent
    their encrypted shares); ``inbox[receiver][sender]`` holds the ciphertexts to route.
    """

    server_round: int
    params: SecAggParams
    participants: tuple[int, ...]
    graph_seed: bytes
    graph: Graph
    public_c: dict[int, bytes] = field(default_factory=dict)
    public_s: dict[int, bytes] = field(default_factory=dict)
    commitments: dict[int, bytes] = field(default_factory=dict)
    inbox: dict[int, dict[int, bytes]] = field(default_factory=dict)
    shared: set[int] = field(default_factory=set)

    @property
    def advertised(self) -> set[int]:
        return set(self.public_c)


def start_round(
    *, server_round: int, config: SecAggConfig, participants: Sequence[int]
) -> ServerRound:
    """Resolve the parameters for this many participants and draw the graph seed."""
    ids = tuple(sorted(participants))
    params = config.params_for(len(ids))
    seed = os.urandom(KEY_BYTES)
    graph = neighbour_graph(ids, degree=params.degree, seed=seed)
    return ServerRound(
        server_round=server_round, params=params, participants=ids, graph_seed=seed, graph=graph
    )


def record_keys(state: ServerRound, node: int, *, c_public: bytes, s_public: bytes) -> bool:
    """Accept a participant's advertised public keys (stage 1); False if malformed."""
    if node not in state.graph or len(c_public) != KEY_BYTES or len(s_public) != KEY_BYTES:
        return False
    state.public_c[node], state.public_s[node] = c_public, s_public
    return True


def keys_for(state: ServerRound, node: int) -> dict[int, tuple[bytes, bytes]]:
    """The public keys ``node`` receives in stage 2: those of its advertising neighbours."""
    return {
        peer: (state.public_c[peer], state.public_s[peer])
        for peer in state.graph[node]
        if peer in state.public_c
    }


def record_shares(
    state: ServerRound, node: int, *, ciphertexts: Mapping[int, bytes], commitment: bytes
) -> bool:
    """Accept ``node``'s encrypted shares (stage 2): one for each neighbour it was sent
    keys of, and a 32-byte seed commitment; False (client treated as dropped) if not."""
    if node not in state.public_c or len(commitment) != 32:
        return False
    if set(ciphertexts) != set(keys_for(state, node)):
        return False
    for receiver, blob in ciphertexts.items():
        state.inbox.setdefault(receiver, {})[node] = blob
    state.commitments[node] = commitment
    state.shared.add(node)
    return True


def shares_for(state: ServerRound, node: int) -> dict[int, bytes]:
    """The ciphertexts ``node`` receives in stage 3: from its neighbours in U2."""
    box = state.inbox.get(node, {})
    return {
        sender: box[sender]
        for sender in state.graph[node]
        if sender in state.shared and sender in box
    }


def empty_sum(state: ServerRound, num_params: int) -> np.ndarray:
    """A zero accumulator for the masked inputs."""
    return np.zeros(input_length(num_params), dtype=ring_dtype(state.params.modulus_bits))


def holders_of(state: ServerRound, owner: int) -> set[int]:
    """Who holds shares of ``owner``'s secrets: itself and its neighbours in U2."""
    return {owner} | {p for p in state.graph[owner] if p in state.shared}


def recover_sum(
    state: ServerRound,
    *,
    masked_sum: np.ndarray,
    survivors: Collection[int],
    seed_shares: Mapping[int, Mapping[int, int]],
    key_shares: Mapping[int, Mapping[int, int]],
) -> np.ndarray:
    """The plain sum of the survivors' inputs (in place on ``masked_sum``).

    ``survivors`` (S) are the clients whose masked inputs were added; the dropped D are
    U2 \\ S. ``seed_shares[owner][holder]`` / ``key_shares[owner][holder]`` are the
    shares the survivors revealed in stage 4. Raises :class:`UnmaskError` when a needed
    secret has fewer than T shares or its shares are inconsistent.
    """
    survivors_set = set(survivors)
    if not survivors_set <= state.shared:
        raise UnmaskError("a survivor never shared its keys")
    dropped = state.shared - survivors_set
    threshold = state.params.threshold
    self_keys = []
    for owner in sorted(survivors_set):
        seed = _rebuild(owner, seed_shares.get(owner, {}), threshold, "self-mask seed")
        expected = seed_commitment(seed, server_round=state.server_round, node_id=owner)
        if expected != state.commitments[owner]:
            raise UnmaskError(f"the rebuilt self-mask seed of {owner} fails its commitment")
        self_keys.append(self_mask_key(seed, server_round=state.server_round, node_id=owner))
    pairs = []
    for owner in sorted(dropped):
        private = _rebuild(owner, key_shares.get(owner, {}), threshold, "mask key")
        if public_key_of(private) != state.public_s[owner]:
            raise UnmaskError(f"the rebuilt mask key of {owner} does not match its public key")
        peers = {p: state.public_s[p] for p in state.graph[owner] if p in survivors_set}
        keys = pair_mask_keys(private, peers, server_round=state.server_round, me=owner)
        pairs += [(peer, owner, key) for peer, key in keys.items()]
    return unmask_sum(masked_sum, self_keys=self_keys, dropped_pairs=pairs, prg=state.params.prg)


def _rebuild(owner: int, shares: Mapping[int, int], threshold: int, what: str) -> bytes:
    if len(shares) < threshold:
        raise UnmaskError(
            f"only {len(shares)} shares of the {what} of client {owner}, threshold {threshold}"
        )
    try:
        return reconstruct_secret(
            {holder + 1: y for holder, y in shares.items()}, threshold=threshold
        )
    except ValueError as exc:
        raise UnmaskError(f"{what} of client {owner}: {exc}") from None
