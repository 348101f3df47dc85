"""The honest-client checks of a SecAgg+ client (Bonawitz et al. 2017, §4)."""

from __future__ import annotations

import numpy as np
import pytest

from privacy.secagg import SecAggConfig, SecAggParams
from privacy.secagg import client as C
from privacy.secagg import server as S
from privacy.secagg.keys import ShareAuthenticationError, generate_keypair
from privacy.secagg.quantize import encode_input

IDS = list(range(11, 19))  # 8 clients: K = 6, T = 4


def _round_until_masked(*, skip: frozenset[int] = frozenset()):
    """Run stages 1–3 for every client (those in ``skip`` stop after sharing)."""
    state = S.start_round(
        server_round=5, config=SecAggConfig(enabled=True, bits=12), participants=IDS
    )
    clients = {
        i: C.setup(
            node_id=i,
            server_round=5,
            params=state.params,
            graph_seed=state.graph_seed,
            participants=IDS,
        )
        for i in IDS
    }
    for i, c in clients.items():
        S.record_keys(state, i, c_public=c.c_public, s_public=c.s_public)
    for i, c in clients.items():
        cts, commitment = C.share_keys(c, peer_keys=S.keys_for(state, i))
        S.record_shares(state, i, ciphertexts=cts, commitment=commitment)
    for i, c in clients.items():
        if i not in skip:
            C.open_shares(c, ciphertexts=S.shares_for(state, i))
            C.masked_input(c, encoded=encode_input(np.zeros(3), weight=1, params=state.params))
    return state, clients


def test_never_reveals_both_shares_of_the_same_peer():
    """Prepare a client that revealed a peer's self-seed share; Execute a second
    request listing that peer as dropped; Assert it refuses (and keeps refusing)."""
    state, clients = _round_until_masked()
    me = IDS[0]
    peer = state.graph[me][0]
    seeds, keys = C.unmask(clients[me], survivors=IDS, dropped=[])
    assert peer in seeds and not keys
    others = [i for i in IDS if i != peer]
    with pytest.raises(C.ProtocolError, match="already revealed"):
        C.unmask(clients[me], survivors=others, dropped=[peer])
    again, _ = C.unmask(clients[me], survivors=IDS, dropped=[])  # consistent repeat is fine
    assert again == seeds


def test_refuses_a_peer_listed_as_survivor_and_dropped():
    state, clients = _round_until_masked()
    me = IDS[0]
    peer = state.graph[me][0]
    with pytest.raises(C.ProtocolError, match="both"):
        C.unmask(clients[me], survivors=IDS, dropped=[peer])


def test_refuses_to_unmask_below_the_threshold():
    """Prepare a request where fewer than T of the client's share holders survived;
    Assert the client refuses and reveals nothing."""
    state, clients = _round_until_masked()
    me = IDS[0]
    neighbours = list(state.graph[me])
    t = state.params.threshold
    survivors = [me, *neighbours[: t - 2]]
    dropped = neighbours[t - 2 :]
    with pytest.raises(C.ProtocolError, match="below the threshold"):
        C.unmask(clients[me], survivors=survivors, dropped=dropped)
    assert clients[me].revealed == {}


def test_refuses_to_share_below_the_threshold():
    state = S.start_round(server_round=1, config=SecAggConfig(enabled=True), participants=IDS)
    c = C.setup(
        node_id=IDS[0],
        server_round=1,
        params=state.params,
        graph_seed=state.graph_seed,
        participants=IDS,
    )
    few = {
        p: (generate_keypair().public, generate_keypair().public) for p in state.graph[IDS[0]][:1]
    }
    with pytest.raises(C.ProtocolError, match="below the threshold"):
        C.share_keys(c, peer_keys=few)


def test_refuses_keys_of_clients_that_are_not_its_neighbours():
    ids = list(range(1, 21))  # 20 clients, K = 10: not everyone is a neighbour
    state = S.start_round(server_round=1, config=SecAggConfig(enabled=True), participants=ids)
    c = C.setup(
        node_id=1,
        server_round=1,
        params=state.params,
        graph_seed=state.graph_seed,
        participants=ids,
    )
    stranger = next(i for i in ids if i != 1 and i not in state.graph[1])
    keys = {p: (generate_keypair().public, generate_keypair().public) for p in state.graph[1]}
    keys[stranger] = (generate_keypair().public, generate_keypair().public)
    with pytest.raises(C.ProtocolError, match="non-neighbours"):
        C.share_keys(c, peer_keys=keys)


def test_a_tampered_share_aborts_the_client():
    """Prepare a ciphertext with one flipped bit; Assert AES-GCM detects it."""
    state, clients = _round_until_masked(skip=frozenset({IDS[0]}))
    routed = S.shares_for(state, IDS[0])
    sender = next(iter(routed))
    blob = bytearray(routed[sender])
    blob[20] ^= 0x01
    with pytest.raises(ShareAuthenticationError):
        C.open_shares(clients[IDS[0]], ciphertexts={**routed, sender: bytes(blob)})
    assert clients[IDS[0]].stage == "shared"  # nothing masked, nothing kept


def test_a_share_addressed_to_another_client_is_refused():
    state, clients = _round_until_masked(skip=frozenset({IDS[0], IDS[1]}))
    other = S.shares_for(state, IDS[1])
    mine = S.shares_for(state, IDS[0])
    common = next(s for s in mine if s in other)
    with pytest.raises(ShareAuthenticationError):
        C.open_shares(clients[IDS[0]], ciphertexts={**mine, common: other[common]})


def test_setup_refuses_impossible_parameters_and_strangers():
    state = S.start_round(server_round=1, config=SecAggConfig(enabled=True), participants=IDS)
    with pytest.raises(C.ProtocolError, match="not among"):
        C.setup(
            node_id=99,
            server_round=1,
            params=state.params,
            graph_seed=state.graph_seed,
            participants=IDS,
        )
    bad = SecAggParams(degree=6, threshold=9, clip=1.0, bits=16, max_weight=10, modulus_bits=64)
    with pytest.raises(C.ProtocolError, match="threshold"):
        C.setup(
            node_id=IDS[0],
            server_round=1,
            params=bad,
            graph_seed=state.graph_seed,
            participants=IDS,
        )


def test_state_survives_serialization_and_secrets_are_forgotten_after_unmask():
    _, clients = _round_until_masked()
    me = clients[IDS[0]]
    copy = C.ClientRound.from_bytes(me.to_bytes())
    assert copy == me
    C.unmask(copy, survivors=IDS, dropped=[])
    assert copy.s_private == copy.c_private == copy.self_seed == b""
    assert C.ClientRound.from_bytes(copy.to_bytes()).revealed == copy.revealed
