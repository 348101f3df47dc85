"""Property and unit tests of SecAgg+'s building blocks: Shamir sharing, the neighbour
graph, the mask stream, the fixed-point encoding, the share encryption, the config."""

from __future__ import annotations

import contextlib
import itertools
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy.secagg import SecAggConfig
from privacy.secagg.config import (
    default_degree,
    default_threshold,
    max_weight_for_ring,
    modulus_bits_for,
)
from privacy.secagg.graph import neighbour_graph
from privacy.secagg.keys import (
    ShareAuthenticationError,
    agree,
    decrypt,
    encrypt,
    generate_keypair,
    public_key_of,
    share_aad,
)
from privacy.secagg.masking import mask_input, pair_mask_key, pair_sign, self_mask_key
from privacy.secagg.prg import keystream
from privacy.secagg.quantize import decode_sum, encode_input
from privacy.secagg.shamir import (
    PRIME,
    interpolate_at_zero,
    reconstruct_secret,
    split_secret,
)

# -- Shamir ---------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    secret=st.binary(min_size=32, max_size=32),
    holders=st.integers(min_value=2, max_value=12),
    data=st.data(),
)
def test_shamir_any_t_shares_reconstruct(secret, holders, data):
    """Prepare shares for random holders; Assert every T-subset (sampled) rebuilds the
    secret and a T-1 subset is refused."""
    threshold = data.draw(st.integers(min_value=2, max_value=holders))
    xs = data.draw(st.lists(st.integers(1, 2**64), min_size=holders, max_size=holders, unique=True))
    shares = dict(zip(xs, split_secret(secret, xs=xs, threshold=threshold), strict=True))
    subsets = list(itertools.combinations(xs, threshold))
    for subset in subsets[:: max(1, len(subsets) // 10)]:
        assert reconstruct_secret({x: shares[x] for x in subset}, threshold=threshold) == secret
    fewer = {x: shares[x] for x in xs[: threshold - 1]}
    with pytest.raises(ValueError, match="below the threshold"):
        reconstruct_secret(fewer, threshold=threshold)


@settings(max_examples=30, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), threshold=st.integers(3, 8))
def test_shamir_fewer_than_t_shares_do_not_determine_the_secret(secret, threshold):
    """Assert interpolating T-1 shares yields a value unrelated to the secret, and that
    for any other candidate secret a consistent polynomial exists (perfect secrecy)."""
    xs = list(range(1, threshold + 2))
    shares = split_secret(secret, xs=xs, threshold=threshold)
    partial = list(zip(xs[: threshold - 1], shares[: threshold - 1], strict=True))
    assert interpolate_at_zero(partial) != int.from_bytes(secret, "big")
    # any candidate s' plus the T-1 shares are T points: a degree T-1 polynomial fits them
    candidate = int.from_bytes(os.urandom(32), "big")
    points = [(0, candidate), *partial]
    assert interpolate_at_zero(points) == candidate % PRIME


def test_shamir_refuses_bad_parameters():
    with pytest.raises(ValueError, match="threshold"):
        split_secret(b"\x01" * 32, xs=[1, 2, 3], threshold=4)
    with pytest.raises(ValueError, match="threshold"):
        split_secret(b"\x01" * 32, xs=[1, 2, 3], threshold=1)
    with pytest.raises(ValueError, match="distinct"):
        split_secret(b"\x01" * 32, xs=[1, 1, 3], threshold=2)
    with pytest.raises(ValueError, match="non-zero"):
        split_secret(b"\x01" * 32, xs=[0, 1, 3], threshold=2)


def test_shamir_inconsistent_shares_are_refused_or_differ():
    """Prepare shares, replace one by a random field element; Assert reconstruction
    refuses (the result no longer fits 32 bytes); a small corruption that still fits
    gives another value, which the server's commitment check then refuses."""
    secret = os.urandom(32)
    shares = split_secret(secret, xs=[1, 2, 3], threshold=3)
    corrupted = {1: shares[0], 2: int.from_bytes(os.urandom(65), "big") % PRIME, 3: shares[2]}
    with pytest.raises(ValueError, match="inconsistent"):
        reconstruct_secret(corrupted, threshold=3)
    nudged = {1: shares[0], 2: (shares[1] + 1) % PRIME, 3: shares[2]}
    with contextlib.suppress(ValueError):
        assert reconstruct_secret(nudged, threshold=3) != secret


# -- the neighbour graph -------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(n=st.integers(min_value=3, max_value=120), data=st.data())
def test_graph_is_k_regular_and_symmetric(n, data):
    """Prepare random ids and an even degree < n-1 (or the complete graph); Assert every
    client has exactly K distinct neighbours, never itself, and edges are symmetric."""
    ids = sorted(data.draw(st.sets(st.integers(0, 2**64 - 1), min_size=n, max_size=n)))
    degree = data.draw(st.sampled_from([d for d in range(2, n - 1, 2)] + [n - 1]))
    graph = neighbour_graph(ids, degree=degree, seed=os.urandom(32))
    assert sorted(graph) == ids
    for node, peers in graph.items():
        assert len(peers) == len(set(peers)) == degree
        assert node not in peers
        for peer in peers:
            assert node in graph[peer]


def test_graph_is_a_function_of_the_seed():
    ids = list(range(1000, 1100))
    seed = os.urandom(32)
    assert neighbour_graph(ids, degree=14, seed=seed) == neighbour_graph(
        list(reversed(ids)), degree=14, seed=seed
    )
    assert neighbour_graph(ids, degree=14, seed=seed) != neighbour_graph(
        ids, degree=14, seed=os.urandom(32)
    )


def test_graph_refuses_odd_degree_below_complete():
    with pytest.raises(ValueError, match="even"):
        neighbour_graph(list(range(10)), degree=3, seed=os.urandom(32))


def test_default_degree_is_logarithmic_and_threshold_a_majority():
    assert default_degree(100) == 14
    assert default_degree(1000) == 20
    assert default_degree(5) == 4  # capped at n - 1
    assert default_threshold(14) == 8
    for k in range(1, 40):
        assert default_threshold(k) > (k + 1) / 2


# -- the mask stream ------------------------------------------------------------------


def test_same_key_same_stream_and_prefix_consistent():
    key = os.urandom(32)
    long = keystream(key, 1000, np.uint64)
    assert np.array_equal(keystream(key, 1000, np.uint64), long)
    assert np.array_equal(keystream(key, 10, np.uint64), long[:10])


def test_different_keys_and_pairs_give_unrelated_streams():
    """Prepare three clients' X25519 keys; Assert both ends of a pair derive the same
    mask key, different pairs different keys, and their streams look independent."""
    a, b, c = (generate_keypair() for _ in range(3))
    kab = pair_mask_key(a.private, b.public, server_round=1, me=1, peer=2)
    kba = pair_mask_key(b.private, a.public, server_round=1, me=2, peer=1)
    kac = pair_mask_key(a.private, c.public, server_round=1, me=1, peer=3)
    kab_next_round = pair_mask_key(a.private, b.public, server_round=2, me=1, peer=2)
    assert kab == kba
    assert len({kab, kac, kab_next_round}) == 3
    s1 = keystream(kab, 20_000, np.uint32).astype(np.float64) / 2**32
    s2 = keystream(kac, 20_000, np.uint32).astype(np.float64) / 2**32
    assert abs(s1.mean() - 0.5) < 0.01 and abs(s2.mean() - 0.5) < 0.01
    assert abs(np.corrcoef(s1, s2)[0, 1]) < 0.03
    assert np.count_nonzero(s1 == s2) < 5


def test_masked_vector_is_not_the_plaintext():
    """Prepare an all-zero update; Assert the masked vector shows none of it (about
    half of every bit position set, nothing equal to the plaintext) and that the
    pairwise masks of a pair cancel in the sum."""
    params = SecAggConfig(enabled=True, bits=16).params_for(3)
    plain = encode_input(np.zeros(4096), weight=1, params=params)
    expected = plain.copy()
    a, b = generate_keypair(), generate_keypair()
    key = pair_mask_key(a.private, b.public, server_round=1, me=10, peer=20)
    self_a, self_b = (self_mask_key(os.urandom(32), server_round=1, node_id=i) for i in (10, 20))
    ya = mask_input(plain.copy(), node_id=10, self_key=self_a, pair_keys={20: key})
    yb = mask_input(plain.copy(), node_id=20, self_key=self_b, pair_keys={10: key})
    assert np.count_nonzero(ya == expected) < 5
    bits = np.unpackbits(ya.view(np.uint8)).mean()
    assert 0.48 < bits < 0.52
    total = (
        ya
        + yb
        - keystream(self_a, ya.size, ya.dtype.type)
        - keystream(self_b, ya.size, ya.dtype.type)
    )
    assert np.array_equal(total, 2 * expected)
    assert pair_sign(10, 20) == -pair_sign(20, 10) == 1


# -- fixed point ----------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    values=st.lists(st.floats(-3, 3, allow_nan=False), min_size=1, max_size=50),
    weight=st.integers(1, 1000),
    bits=st.integers(2, 24),
)
def test_encode_decode_one_input_within_half_a_step(values, weight, bits):
    params = SecAggConfig(enabled=True, clip=1.0, bits=bits, max_weight=1000).params_for(3)
    update = np.array(values)
    decoded = decode_sum(
        encode_input(update, weight=weight, params=params), num_inputs=1, params=params
    )
    assert decoded.total_weight == weight
    assert (
        np.max(np.abs(decoded.mean_update - np.clip(update, -1, 1)))
        <= params.quantization_error + 1e-12
    )
    assert decoded.clipped_fraction == pytest.approx(np.mean(np.abs(update) > 1), abs=1e-4)


def test_encode_refuses_non_finite_updates():
    params = SecAggConfig(enabled=True).params_for(3)
    with pytest.raises(ValueError, match="non-finite"):
        encode_input(np.array([0.0, np.nan]), weight=1, params=params)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(3, 10**6), bits=st.integers(2, 32), max_weight=st.integers(1, 2**32))
def test_modulus_holds_the_largest_possible_sum(n, bits, max_weight):
    """Assert the chosen modulus holds n · max_weight · (2^(B-1)-1), or none is offered."""
    m = modulus_bits_for(num_clients=n, bits=bits, max_weight=max_weight)
    largest = n * max(max_weight * (2 ** (bits - 1) - 1), 65535)
    if m is None:
        assert largest >= 2**63
    else:
        assert largest < 2 ** (m - 1)
        assert m == 64 or largest < 2**31


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 40000), bits=st.integers(2, 32))
def test_max_weight_for_ring_is_the_largest_cap_that_keeps_32_bits(n, bits):
    """Assert the cap it names selects the 32-bit ring and one more selects 64 bits
    (oracle: modulus_bits_for), and that None means no cap gives 32 bits."""
    cap = max_weight_for_ring(num_clients=n, bits=bits)
    if cap is None:
        assert modulus_bits_for(num_clients=n, bits=bits, max_weight=1) == 64
        return
    assert modulus_bits_for(num_clients=n, bits=bits, max_weight=cap) == 32
    assert modulus_bits_for(num_clients=n, bits=bits, max_weight=cap + 1) == 64


# -- share encryption -----------------------------------------------------------------


def test_share_ciphertext_is_authenticated_and_bound_to_its_pair():
    a, b = generate_keypair(), generate_keypair()
    key = agree(a.private, b.public)
    assert key == agree(b.private, a.public)
    aad = share_aad(server_round=3, sender=1, receiver=2)
    blob = encrypt(key, b"share", aad=aad)
    assert decrypt(key, blob, aad=aad) == b"share"
    tampered = bytearray(blob)
    tampered[-1] ^= 1
    with pytest.raises(ShareAuthenticationError):
        decrypt(key, bytes(tampered), aad=aad)
    with pytest.raises(ShareAuthenticationError):  # redirected / replayed
        decrypt(key, blob, aad=share_aad(server_round=4, sender=1, receiver=2))
    with pytest.raises(ShareAuthenticationError):
        decrypt(key, blob[:10], aad=aad)
    assert public_key_of(a.private) == a.public


def test_low_order_public_key_is_refused():
    with pytest.raises(ValueError):
        agree(generate_keypair().private, bytes(32))


# -- configuration ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "clients", "message"),
    [
        ({"secagg-threshold": 20, "secagg-degree": 10}, 50, "lower --secagg-threshold"),
        ({}, 2, "at least 3 clients"),
        ({"secagg-degree": 60}, 50, "lower --secagg-degree"),
        ({"secagg-degree": 5}, 50, "even"),
        ({"secagg-threshold": 1}, 50, ">= 2"),
        ({"secagg-bits": 40}, 50, "between 2 and 32"),
        ({"secagg-clip": 0}, 50, "positive"),
        ({"secagg-bits": 32, "secagg-max-weight": 2**31}, 50, "overflows a 64-bit modulus"),
        ({"secagg-on-failure": "retry"}, 50, "continue or stop"),
        ({"secagg-degree": "ten"}, 50, "must be a whole number"),
        ({"secagg": "maybe"}, 50, "true or false"),
    ],
)
def test_bad_configurations_are_refused_with_the_value_to_change(values, clients, message):
    with pytest.raises(ValueError, match=message):
        SecAggConfig.from_run_config({"secagg": True, **values}).params_for(clients)


def test_config_round_trips_through_the_run_config():
    config = SecAggConfig(enabled=True, degree=8, threshold=5, clip=0.25, bits=12)
    assert SecAggConfig.from_run_config(config.as_run_config()) == config
    assert SecAggConfig.from_run_config({"secagg": "true"}).enabled
    params = config.params_for(40)
    assert (params.degree, params.threshold, params.modulus_bits) == (8, 5, 64)
    small = SecAggConfig(enabled=True, bits=12, max_weight=1024).params_for(1000)
    assert small.modulus_bits == 32


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 5000), min_size=8, max_size=8), min_size=3, max_size=12),
    st.integers(0, 2**32 - 1),
)
def test_extra_counts_sum_exactly_beside_the_update(counts, seed):
    # Prepare: each client's update and its fairness counts (8 = 2 groups × 4).
    rng = np.random.default_rng(seed)
    params = SecAggConfig(enabled=True, clip=1.0, bits=16, max_weight=10_000).params_for(
        len(counts)
    )
    updates = [rng.uniform(-0.5, 0.5, 5) for _ in counts]
    # Execute: the modular sum of the encoded inputs, as unmasking reveals it
    total = sum(
        encode_input(u, weight=10, params=params, extra=c)
        for u, c in zip(updates, counts, strict=True)
    )
    decoded = decode_sum(np.asarray(total), num_inputs=len(counts), params=params, extra=8)
    plain = decode_sum(
        np.asarray(sum(encode_input(u, weight=10, params=params) for u in updates)),
        num_inputs=len(counts),
        params=params,
    )
    # Assert: the counts' sum is exact and the update is decoded as without them
    assert decoded.extra_sums == tuple(int(v) for v in np.sum(counts, axis=0))
    assert decoded.total_weight == 10 * len(counts)
    np.testing.assert_array_equal(decoded.mean_update, plain.mean_update)
