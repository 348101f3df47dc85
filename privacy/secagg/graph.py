"""The masking graph: a random K-regular graph on a round's clients, from a public seed.

Bell et al. (CCS 2020) replace SecAgg's complete graph by a sparse random graph of
degree K = O(log n): a client masks only with, and shares its secrets only among, its K
neighbours, which turns the O(n) per-client cost into O(log n). Following their
practical instantiation, the graph is a Harary graph H(K, n) — clients on a ring, each
joined to the K/2 nearest on either side — whose ring order is a uniformly random
permutation of the clients. It is exactly K-regular and K-connected.

The permutation is derived from a 32-byte seed that the coordinator draws from
``os.urandom`` and sends to every client: each client recomputes its own neighbours
from the seed and checks that the coordinator routes keys only from them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from privacy.secagg.prg import keystream

Graph = dict[int, tuple[int, ...]]


def ring_order(node_ids: Sequence[int], *, seed: bytes) -> list[int]:
    """The clients in a random ring order determined by ``seed`` (and the id set).

    Each client gets a 64-bit ChaCha20 value from the seed at the index of its rank
    among the sorted ids; sorting by (value, id) is a uniform permutation up to ties of
    probability ≈ n²/2^65.
    """
    return list(_ring_order(tuple(node_ids), bytes(seed)))


@functools.lru_cache(maxsize=4)
def _ring_order(node_ids: tuple[int, ...], seed: bytes) -> tuple[int, ...]:
    """:func:`ring_order`, remembered for a few (ids, seed): it is a function of public
    values only, so the clients of a round simulated in one process share it."""
    ids = np.array(sorted(set(node_ids)), dtype=np.uint64)
    if len(ids) != len(node_ids):
        raise ValueError("node ids must be distinct")
    values = keystream(seed, len(ids), np.uint64, prg="chacha20")  # fixed: part of the wire spec
    return tuple(ids[np.lexsort((ids, values))].tolist())


def _check_degree(n: int, degree: int) -> None:
    if degree < 1:
        raise ValueError("the masking graph needs degree >= 1")
    if degree < n - 1 and degree % 2:
        raise ValueError(f"degree {degree} must be even (or >= n-1 for the complete graph)")


def _ring_neighbours(order: Sequence[int], pos: int, degree: int) -> tuple[int, ...]:
    n = len(order)
    if degree >= n - 1:
        return tuple(sorted(order[j] for j in range(n) if j != pos))
    half = degree // 2
    peers = {order[(pos + d) % n] for d in range(1, half + 1)}
    peers |= {order[(pos - d) % n] for d in range(1, half + 1)}
    return tuple(sorted(peers))


def neighbour_graph(node_ids: Sequence[int], *, degree: int, seed: bytes) -> Graph:
    """Each client's neighbours in the random Harary graph H(degree, n).

    ``degree`` ≥ n−1 gives the complete graph (SecAgg); otherwise it must be even.
    """
    _check_degree(len(node_ids), degree)
    order = ring_order(node_ids, seed=seed)
    return {node: _ring_neighbours(order, pos, degree) for pos, node in enumerate(order)}


def neighbours_of(
    node: int, node_ids: Sequence[int], *, degree: int, seed: bytes
) -> tuple[int, ...]:
    """One client's neighbours in :func:`neighbour_graph` (O(n log n), not O(n·K))."""
    _check_degree(len(node_ids), degree)
    order = ring_order(node_ids, seed=seed)
    try:
        pos = order.index(node)
    except ValueError:
        raise ValueError(f"node {node} is not among the participants") from None
    return _ring_neighbours(order, pos, degree)
