"""Secure aggregation as the round loop's train exchange (SecAgg+ over Flower messages).

:class:`SecAggExchange` drives the four protocol stages through the Grid —
``query.secagg_setup``, ``query.secagg_share``, ``train.secagg``, ``query.secagg_unmask``
— and returns ONE synthetic reply: its ``ArrayRecord`` is the global model plus the
weighted mean update recovered from the masked sum, its ``num-examples`` the total
weight, its ``aggregated-clients`` the number of survivors (and, when sites measure
energy, ``energy-kwh``/``co2-g``/``energy-sites``: the sum of the survivors' measured
energy, from the masked slots of ``privacy.secagg.energy_slots``). Any strategy that only needs
the weighted sum of the updates (FedAvg, FedProx, FedAdam, FedYogi, FedAvgM, ...)
aggregates it unchanged; the coordinator never sees an individual update.

When too many clients drop (or shares are missing or inconsistent) the round fails
cleanly: no reply, so the loop keeps the previous model, and ``secagg_failed = 1`` is
recorded in the round's metrics. ``secagg-on-failure = stop`` ends the run instead.
The protocol steps themselves are pure functions in ``privacy.secagg.server``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from edge_client.protocol import keys as k
from edge_client.protocol import secagg as sa
from privacy.secagg import energy_slots
from privacy.secagg import server as protocol
from privacy.secagg.arrays import apply_update, num_params
from privacy.secagg.client import pack_ids
from privacy.secagg.config import SecAggConfig
from privacy.secagg.quantize import decode_sum, input_length, ring_dtype
from privacy.secagg.shamir import decode_share
from tasks.npy import array_view

log = logging.getLogger(__name__)

ENERGY_SITES = "energy-sites"  # survivors whose masked input carried measured energy


class SecAggRoundFailed(Exception):
    """A round whose sum cannot be recovered; the previous model stays."""


class SecAggRunStopped(RuntimeError):
    """Raised when ``secagg-on-failure = stop`` and a round failed."""


@dataclass
class _Round:
    """One round of the protocol, handed from stage to stage."""

    grid: Grid
    number: int
    deadline: float  # time.monotonic() by which every stage's replies must be in
    train: dict[int, Message]  # the strategy's train instruction, by selected node
    state: protocol.ServerRound
    stats: dict[str, float]
    survivors: list[int] = field(default_factory=list)  # nodes whose masked input arrived
    sent: dict[int, Message] = field(default_factory=dict)  # the stage-3 messages, by node

    @property
    def threshold(self) -> int:
        return self.state.params.threshold


@dataclass
class SecAggExchange:
    """The SecAgg+ train exchange; ``round_stats`` is its reply filter for metrics."""

    config: SecAggConfig
    # Integers each client appends to its masked input (the fairness audit's per-group
    # counts, tasks/fairness.py); their sum comes back as the reply's eval-fairness-counts.
    extra_ints: int = 0
    _stats: dict[int, dict[str, float]] = field(default_factory=dict)

    # -- the loop's hooks -------------------------------------------------------------
    def exchange(
        self, grid: Grid, messages: Iterable[Message], *, server_round: int, timeout: float
    ) -> list[Message]:
        t0 = time.perf_counter()
        stats: dict[str, float] = {"secagg_failed": 0.0}
        self._stats[server_round] = stats
        try:
            reply = self._run(grid, list(messages), server_round, timeout, stats)
        except SecAggRoundFailed as exc:
            stats["secagg_failed"] = 1.0
            stats["secagg_seconds"] = time.perf_counter() - t0
            log.warning(
                "round %d: secure aggregation failed (%s); model unchanged", server_round, exc
            )
            if self.config.on_failure == "stop":
                raise SecAggRunStopped(
                    f"secure aggregation failed in round {server_round}: {exc} "
                    "(secagg-on-failure = stop)"
                ) from None
            return []
        stats["secagg_seconds"] = time.perf_counter() - t0
        return [reply]

    def round_stats(
        self, server_round: int, replies: list[Message]
    ) -> tuple[list[Message], dict[str, float]]:
        """A reply filter that keeps every reply and reports this round's counters."""
        return replies, self._stats.pop(server_round, {})

    # -- the protocol: one method per stage, mirroring edge_client.secagg_client ---------
    def _run(
        self,
        grid: Grid,
        messages: list[Message],
        server_round: int,
        timeout: float,
        stats: dict[str, float],
    ) -> Message:
        rnd = self._start(grid, messages, server_round, timeout, stats)
        self._setup(rnd)
        self._share(rnd)
        global_arrays, masked_sum = self._masked_input(rnd)
        return self._unmask(rnd, global_arrays, masked_sum)

    def _start(
        self,
        grid: Grid,
        messages: list[Message],
        server_round: int,
        timeout: float,
        stats: dict[str, float],
    ) -> _Round:
        """The round's protocol state over the strategy's selected nodes."""
        deadline = time.monotonic() + timeout
        train = {m.metadata.dst_node_id: m for m in messages}
        if not train:
            raise SecAggRoundFailed("no clients were selected")
        try:
            state = protocol.start_round(
                server_round=server_round, config=self.config, participants=list(train)
            )
        except ValueError as exc:
            raise SecAggRoundFailed(str(exc)) from None
        return _Round(grid, server_round, deadline, train, state, stats)

    def _setup(self, rnd: _Round) -> None:
        """Stage 1 (``handle_setup``): every participant advertises its two public keys."""
        state = rnd.state
        base = {
            sa.SA_ROUND: rnd.number,
            sa.SA_GRAPH_SEED: state.graph_seed,
            sa.SA_PARTICIPANTS: pack_ids(state.participants),
            **sa.params_to_record(state.params),
        }
        requests = {node: _record(base) for node in state.participants}
        for node, reply in self._stage(rnd, requests, sa.MT_SECAGG_SETUP):
            _record_keys(state, node, reply)
        rnd.stats["secagg_dropped_setup"] = float(len(state.participants) - len(state.advertised))

    def _share(self, rnd: _Round) -> None:
        """Stage 2 (``handle_share``): each advertiser gets its neighbours' keys and sends
        them encrypted shares of its secrets, through the coordinator."""
        state = rnd.state
        requests = {}
        for node in sorted(state.advertised):
            peers = protocol.keys_for(state, node)
            requests[node] = _record(
                {
                    sa.SA_ROUND: rnd.number,
                    sa.SA_PEERS: list(peers),
                    sa.SA_PEERS_C: [c for c, _ in peers.values()],
                    sa.SA_PEERS_S: [s for _, s in peers.values()],
                }
            )
        for node, reply in self._stage(rnd, requests, sa.MT_SECAGG_SHARE):
            _record_shares(state, node, reply)
        rnd.stats["secagg_dropped_share"] = float(len(state.advertised) - len(state.shared))
        if len(state.shared) < rnd.threshold:
            raise SecAggRoundFailed(
                f"only {len(state.shared)} clients shared keys, threshold is {rnd.threshold}"
            )

    def _masked_input(self, rnd: _Round) -> tuple[ArrayRecord, np.ndarray]:
        """Stage 3 (``handle_masked_train``): the strategy's train instruction plus the
        routed shares; returns the global model and the sum of the masked inputs."""
        state = rnd.state
        global_arrays = next(iter(rnd.train.values())).content.array_records[k.ARRAYS]
        extra = self.extra_ints + energy_slots.slot_count(state.params.max_weight)
        length = input_length(num_params(global_arrays), extra)
        dtype = ring_dtype(state.params.modulus_bits)
        total = np.zeros(length, dtype=dtype)
        requests = {}
        for node in sorted(state.shared):
            routed = protocol.shares_for(state, node)
            content = RecordDict(dict(rnd.train[node].content.items()))
            content[sa.SECAGG] = ConfigRecord(
                {
                    sa.SA_ROUND: rnd.number,
                    sa.SA_SENDERS: list(routed),
                    sa.SA_CIPHERTEXTS: list(routed.values()),
                }
            )
            requests[node] = content
        bad_shares = 0
        for node, reply in self._stage(rnd, requests, sa.MT_SECAGG_TRAIN, rnd.sent):
            if reply.has_error():
                bad_shares += int(reply.error.code == sa.ERR_SECAGG_BAD_SHARE)
                continue
            vector = _masked_vector(reply, length=length, dtype=dtype)
            if vector is None:
                continue
            np.add(total, vector, out=total)
            rnd.survivors.append(node)
        rnd.stats["secagg_bad_shares"] = float(bad_shares)
        rnd.stats["secagg_dropped_input"] = float(len(state.shared) - len(rnd.survivors))
        if len(rnd.survivors) < rnd.threshold:
            raise SecAggRoundFailed(
                f"only {len(rnd.survivors)} masked inputs arrived, threshold is {rnd.threshold}"
            )
        return global_arrays, total

    def _unmask(self, rnd: _Round, global_arrays: ArrayRecord, masked_sum: np.ndarray) -> Message:
        """Stage 4 (``handle_unmask``): survivors send the seed shares of surviving
        neighbours and the key shares of dropped ones; the masks cancel out of the sum."""
        state, survivors = rnd.state, rnd.survivors
        survivor_set = set(survivors)
        dropped = state.shared - survivor_set
        requests = {}
        for node in survivors:
            near = set(state.graph[node]) | {node}
            requests[node] = _record(
                {
                    sa.SA_ROUND: rnd.number,
                    sa.SA_SURVIVORS: sorted(near & survivor_set),
                    sa.SA_DROPPED: sorted(near & dropped),
                }
            )
        seed_shares: dict[int, dict[int, int]] = {}
        key_shares: dict[int, dict[int, int]] = {}
        answered = 0
        for node, reply in self._stage(rnd, requests, sa.MT_SECAGG_UNMASK):
            shares = _unmask_shares(state, node, reply, survivors=survivor_set, dropped=dropped)
            if shares is None:
                continue
            seeds, keys = shares
            for owner, value in seeds.items():
                seed_shares.setdefault(owner, {})[node] = value
            for owner, value in keys.items():
                key_shares.setdefault(owner, {})[node] = value
            answered += 1
        rnd.stats["secagg_unmask_missing"] = float(len(survivors) - answered)
        return self._aggregate(rnd, global_arrays, masked_sum, seed_shares, key_shares)

    def _aggregate(
        self,
        rnd: _Round,
        global_arrays: ArrayRecord,
        masked_sum: np.ndarray,
        seed_shares: dict[int, dict[int, int]],
        key_shares: dict[int, dict[int, int]],
    ) -> Message:
        """The synthetic reply: the global model plus the survivors' mean update."""
        state, survivors = rnd.state, rnd.survivors
        try:
            plain = protocol.recover_sum(
                state,
                masked_sum=masked_sum,
                survivors=survivors,
                seed_shares=seed_shares,
                key_shares=key_shares,
            )
            energy_ints = energy_slots.slot_count(state.params.max_weight)
            decoded = decode_sum(
                plain,
                num_inputs=len(survivors),
                params=state.params,
                extra=self.extra_ints + energy_ints,
            )
        except (protocol.UnmaskError, ValueError) as exc:
            raise SecAggRoundFailed(str(exc)) from None
        rnd.stats["secagg_survivors"] = float(len(survivors))
        rnd.stats["secagg_clipped_fraction"] = decoded.clipped_fraction
        rnd.stats["secagg_modulus_bits"] = float(state.params.modulus_bits)
        new_arrays = apply_update(global_arrays, decoded.mean_update)
        metrics = MetricRecord(
            {k.NUM_EXAMPLES: decoded.total_weight, sa.AGGREGATED_CLIENTS: len(survivors)}
        )
        if self.extra_ints:
            metrics[k.EVAL_FAIRNESS_COUNTS] = list(decoded.extra_sums[: self.extra_ints])
        energy = energy_slots.decode(
            decoded.extra_sums[self.extra_ints :], max_weight=state.params.max_weight
        )
        if energy.sites:  # the survivors that measured; only their sum is known
            metrics[k.ENERGY_KWH] = energy.energy_kwh
            metrics[k.CO2_G] = energy.co2_g
            metrics[ENERGY_SITES] = energy.sites
        return Message(
            RecordDict({k.ARRAYS: new_arrays, k.METRICS: metrics}),
            reply_to=rnd.sent[min(survivors)],
        )

    def _stage(
        self,
        rnd: _Round,
        content: Mapping[int, RecordDict],
        message_type: str,
        outgoing: dict[int, Message] | None = None,
    ) -> Iterator[tuple[int, Message]]:
        """One stage's messages (made in node order, kept in ``outgoing`` when given),
        delivered; yields (node, reply) as :meth:`_send` does."""
        made = {
            node: rnd.grid.create_message(content[node], message_type, node, str(rnd.number))
            for node in sorted(content)
        }
        if outgoing is not None:
            outgoing.update(made)
        yield from self._send(rnd.grid, made.values(), rnd.deadline)

    def _send(
        self, grid: Grid, messages: Iterable[Message], deadline: float
    ) -> Iterator[tuple[int, Message]]:
        """Deliver ``messages`` (at most ``max_in_flight`` at a time when set) and yield
        (node, reply) until the stage's replies are in or the round's deadline passes."""
        pending = list(messages)
        window = self.config.max_in_flight or len(pending) or 1
        for start in range(0, len(pending), window):
            chunk = pending[start : start + window]
            remaining = max(0.0, deadline - time.monotonic())
            for reply in grid.send_and_receive(chunk, timeout=remaining):
                yield reply.metadata.src_node_id, reply


def _record(values: Mapping[str, Any]) -> RecordDict:
    return RecordDict({sa.SECAGG: ConfigRecord(dict(values))})


def _record_keys(state: protocol.ServerRound, node: int, reply: Message) -> None:
    """Keep the public keys of a stage-1 reply; a malformed one leaves the node out."""
    if reply.has_error():
        return
    rec = reply.content.config_records.get(sa.SECAGG)
    if rec is None:
        return
    with _tolerant():
        protocol.record_keys(
            state,
            node,
            c_public=sa.bytes_value(rec, sa.SA_C_PUBLIC),
            s_public=sa.bytes_value(rec, sa.SA_S_PUBLIC),
        )


def _record_shares(state: protocol.ServerRound, node: int, reply: Message) -> None:
    """Keep the encrypted shares of a stage-2 reply; a malformed one leaves the node out."""
    if reply.has_error():
        return
    rec = reply.content.config_records.get(sa.SECAGG)
    if rec is None:
        return
    with _tolerant():
        receivers = sa.int_list(rec, sa.SA_RECEIVERS)
        blobs = sa.bytes_list(rec, sa.SA_CIPHERTEXTS)
        if len(receivers) == len(blobs):
            protocol.record_shares(
                state,
                node,
                ciphertexts=dict(zip(receivers, blobs, strict=True)),
                commitment=sa.bytes_value(rec, sa.SA_COMMITMENT),
            )


def _masked_vector(reply: Message, *, length: int, dtype: type) -> np.ndarray | None:
    """The masked input of a stage-3 reply, or None if it is malformed."""
    record = reply.content.array_records.get(sa.SECAGG_MASKED)
    if record is None or sa.SECAGG_VECTOR not in record:
        return None
    try:
        vector = array_view(record[sa.SECAGG_VECTOR])  # read-only view: only added up
    except (ValueError, TypeError):
        return None
    if vector.dtype != dtype or vector.shape != (length,):
        return None
    return vector


def _unmask_shares(
    state: protocol.ServerRound,
    node: int,
    reply: Message,
    *,
    survivors: set[int],
    dropped: set[int],
) -> tuple[dict[int, int], dict[int, int]] | None:
    """The (seed, key) shares of a stage-4 reply by owner, or None when the reply is an
    error, malformed, or names owners it cannot hold or must not reveal."""
    if reply.has_error():
        return None
    rec = reply.content.config_records.get(sa.SECAGG)
    if rec is None:
        return None
    with _tolerant():
        seeds = _shares(rec, sa.SA_SEED_OWNERS, sa.SA_SEED_SHARES)
        keys = _shares(rec, sa.SA_KEY_OWNERS, sa.SA_KEY_SHARES)
        holders_ok = all(node in protocol.holders_of(state, o) for o in seeds | keys)
        if holders_ok and set(seeds) <= survivors and set(keys) <= dropped:
            return seeds, keys
    return None


def _shares(record: ConfigRecord, owners_key: str, shares_key: str) -> dict[int, int]:
    owners = sa.int_list(record, owners_key)
    values = sa.bytes_list(record, shares_key)
    if len(owners) != len(values) or len(set(owners)) != len(owners):
        raise ValueError("malformed share list")
    return {o: decode_share(v) for o, v in zip(owners, values, strict=True)}


class _tolerant:
    """Context manager: a malformed reply makes its client count as dropped."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        return exc_type is not None and issubclass(exc_type, KeyError | ValueError | TypeError)
