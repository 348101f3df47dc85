"""Property tests of the SecAgg+ protocol run end to end in memory (pure steps only).

Over random client counts, vector sizes, weights and dropout sets, the recovered
weighted mean equals the plain weighted mean of the survivors within the quantization
bound; beyond the tolerated dropouts the server refuses (never a wrong sum).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from privacy.secagg import SecAggConfig
from privacy.secagg import client as C
from privacy.secagg import server as S
from privacy.secagg.config import max_weight_for_ring
from privacy.secagg.quantize import decode_sum, encode_input


def run_protocol(
    *,
    updates: dict[int, np.ndarray],
    weights: dict[int, int],
    config: SecAggConfig,
    drop_after_share: set[int] = frozenset(),  # type: ignore[assignment]
    drop_after_input: set[int] = frozenset(),  # type: ignore[assignment]
    server_round: int = 7,
    roundtrip_state: bool = True,
):
    """One in-memory round; returns (DecodedSum, survivors, params)."""
    ids = sorted(updates)
    state = S.start_round(server_round=server_round, config=config, participants=ids)
    clients = {
        i: C.setup(
            node_id=i,
            server_round=server_round,
            params=state.params,
            graph_seed=state.graph_seed,
            participants=state.participants,
        )
        for i in ids
    }
    for i, c in clients.items():
        assert S.record_keys(state, i, c_public=c.c_public, s_public=c.s_public)
    for i, c in clients.items():
        cts, commitment = C.share_keys(c, peer_keys=S.keys_for(state, i))
        assert S.record_shares(state, i, ciphertexts=cts, commitment=commitment)
    total = S.empty_sum(state, len(next(iter(updates.values()))))
    survivors = []
    for i in ids:
        if i in drop_after_share:
            continue
        c = clients[i]
        if roundtrip_state:
            c = clients[i] = C.ClientRound.from_bytes(c.to_bytes())
        C.open_shares(c, ciphertexts=S.shares_for(state, i))
        encoded = encode_input(updates[i], weight=weights[i], params=state.params)
        total += C.masked_input(c, encoded=encoded)
        survivors.append(i)
    dropped = state.shared - set(survivors)
    seed_shares: dict[int, dict[int, int]] = {}
    key_shares: dict[int, dict[int, int]] = {}
    for i in survivors:
        if i in drop_after_input:
            continue
        near = set(state.graph[i]) | {i}
        try:
            seeds, keys = C.unmask(
                clients[i], survivors=near & set(survivors), dropped=near & dropped
            )
        except C.ProtocolError:
            continue  # an honest client refusing below the threshold
        for owner, value in seeds.items():
            seed_shares.setdefault(owner, {})[i] = value
        for owner, value in keys.items():
            key_shares.setdefault(owner, {})[i] = value
    plain = S.recover_sum(
        state,
        masked_sum=total,
        survivors=survivors,
        seed_shares=seed_shares,
        key_shares=key_shares,
    )
    return decode_sum(plain, num_inputs=len(survivors), params=state.params), survivors, state


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(min_value=3, max_value=14),
    dim=st.integers(min_value=1, max_value=40),
    bits=st.integers(min_value=8, max_value=20),
    data=st.data(),
)
def test_recovered_mean_equals_weighted_mean_within_quantization(n, dim, bits, data):
    """Prepare random updates, weights and a tolerated dropout set; Execute the whole
    protocol; Assert the unmasked mean equals the plain weighted mean (of the clipped
    updates) within half a quantization step, and the total weight is exact."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    ids = sorted(data.draw(st.sets(st.integers(1, 2**63), min_size=n, max_size=n)))
    config = SecAggConfig(enabled=True, clip=0.5, bits=bits, max_weight=1000)
    degree = config.params_for(n).degree
    threshold = config.params_for(n).threshold
    # at most K+1-T drops keeps every neighbourhood at or above the threshold
    tolerated = degree + 1 - threshold
    dropped = data.draw(st.sets(st.sampled_from(ids), max_size=min(tolerated, n - threshold)))
    late = (
        data.draw(st.sets(st.sampled_from(ids), max_size=max(0, tolerated - len(dropped))))
        - dropped
    )
    updates = {i: rng.normal(0, 0.3, dim) for i in ids}
    weights = {i: int(rng.integers(1, 1000)) for i in ids}
    decoded, survivors, state = run_protocol(
        updates=updates,
        weights=weights,
        config=config,
        drop_after_share=set(dropped),
        drop_after_input=set(late),
    )
    total_weight = sum(weights[i] for i in survivors)
    expected = sum(weights[i] * np.clip(updates[i], -0.5, 0.5) for i in survivors) / total_weight
    assert survivors == sorted(set(ids) - dropped)
    assert decoded.total_weight == total_weight
    bound = state.params.quantization_error + 1e-12
    assert np.max(np.abs(decoded.mean_update - expected)) <= bound


@settings(max_examples=10, deadline=None)
@given(n=st.integers(min_value=5, max_value=12), data=st.data())
def test_beyond_tolerated_dropouts_the_server_refuses(n, data):
    """Prepare a dropout set that leaves some dropped client with fewer than T
    surviving share holders; Execute; Assert recovery raises (no wrong sum)."""
    ids = list(range(100, 100 + n))
    config = SecAggConfig(enabled=True, clip=1.0, bits=12, max_weight=10)
    params = config.params_for(n)
    survivors_count = params.threshold - 1  # fewer than T inputs reach the server
    kept = set(data.draw(st.permutations(ids))[:survivors_count])
    updates = {i: np.full(3, 0.1) for i in ids}
    with pytest.raises((S.UnmaskError, C.ProtocolError)):
        run_protocol(
            updates=updates,
            weights=dict.fromkeys(ids, 1),
            config=config,
            drop_after_share=set(ids) - kept,
        )


@pytest.mark.parametrize("prg", ["aes128-ctr", "chacha20"])
def test_no_dropout_sum_is_exact_with_extreme_values(prg):
    """Prepare updates at ±clip with the largest weights; Assert no modulus overflow:
    the mean is exactly ±clip (within rounding) and the weight sum exact."""
    n = 6
    config = SecAggConfig(enabled=True, clip=2.0, bits=16, max_weight=65536, prg=prg)
    updates = {i: np.array([5.0, -5.0, 2.0, -2.0]) for i in range(1, n + 1)}
    weights = dict.fromkeys(updates, 65536)
    decoded, _, state = run_protocol(updates=updates, weights=weights, config=config)
    assert decoded.total_weight == n * 65536
    assert np.allclose(decoded.mean_update, [2.0, -2.0, 2.0, -2.0], atol=1e-12)
    assert decoded.clipped_fraction == pytest.approx(0.5, abs=1e-4)
    assert state.params.modulus_bits == 64


def test_weights_above_max_weight_count_as_max_weight():
    """Prepare one client whose weight exceeds max-weight; Assert it is clamped."""
    config = SecAggConfig(enabled=True, clip=1.0, bits=12, max_weight=10)
    updates = {1: np.array([0.5]), 2: np.array([0.0]), 3: np.array([0.0])}
    decoded, _, _ = run_protocol(updates=updates, weights={1: 1000, 2: 10, 3: 10}, config=config)
    assert decoded.total_weight == 30
    assert decoded.mean_update[0] == pytest.approx(0.5 / 3, abs=1e-3)


def _wide_ring_oracle(updates, weights, params, survivors):
    """The survivors' aggregate computed without masks in the 64-bit ring."""
    wide = dataclasses.replace(params, modulus_bits=64)
    total = sum(encode_input(updates[i], weight=weights[i], params=wide) for i in survivors)
    return decode_sum(total, num_inputs=len(survivors), params=wide)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(3, 9), bits=st.integers(8, 16), data=st.data())
def test_32_bit_ring_gives_the_64_bit_aggregate_bit_for_bit(n, bits, data):
    """Prepare a cap that selects the 32-bit ring, random updates (some beyond the clip),
    weights up to the cap and a tolerated dropout; Execute the masked protocol; Assert its
    aggregate equals the 64-bit ring's unmasked one exactly (every float bit)."""
    cap = max_weight_for_ring(num_clients=n, bits=bits)
    assert cap is not None
    config = SecAggConfig(enabled=True, clip=1.0, bits=bits, max_weight=cap)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    ids = list(range(1, n + 1))
    updates = {i: rng.normal(scale=0.8, size=30) for i in ids}
    weights = {i: int(rng.integers(1, cap + 1)) for i in ids}
    weights[ids[0]] = cap  # the largest weight the ring must hold
    dropped = {ids[-1]} if data.draw(st.booleans()) else set()
    decoded, survivors, state = run_protocol(
        updates=updates, weights=weights, config=config, drop_after_share=dropped
    )
    assert state.params.modulus_bits == 32
    oracle = _wide_ring_oracle(updates, weights, state.params, survivors)
    assert decoded.mean_update.tobytes() == oracle.mean_update.tobytes()
    assert decoded.total_weight == oracle.total_weight == sum(weights[i] for i in survivors)
    assert decoded.clipped_fraction == oracle.clipped_fraction


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_32_bit_ring_holds_the_largest_sum_at_its_cap(sign):
    """Prepare every client at the clip with the largest weight the 32-bit ring allows
    (the sum is within 2^31 of wrapping); Assert the mean is exactly ±clip; one more unit
    of weight makes the configuration choose 64 bits instead."""
    n, bits = 7, 16
    cap = max_weight_for_ring(num_clients=n, bits=bits)
    assert cap is not None
    config = SecAggConfig(enabled=True, clip=1.0, bits=bits, max_weight=cap)
    updates = {i: np.full(5, 3.0 * sign) for i in range(1, n + 1)}
    decoded, _, state = run_protocol(
        updates=updates, weights=dict.fromkeys(updates, cap), config=config
    )
    assert state.params.modulus_bits == 32
    assert n * (cap + 1) * (2 ** (bits - 1) - 1) >= 2**31  # one more unit would wrap
    assert np.array_equal(decoded.mean_update, np.full(5, sign))
    assert decoded.total_weight == n * cap
    wider = SecAggConfig(enabled=True, clip=1.0, bits=bits, max_weight=cap + 1)
    assert wider.params_for(n).modulus_bits == 64
