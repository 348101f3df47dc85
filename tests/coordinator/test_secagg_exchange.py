"""Secure aggregation through the round loop, the real ClientApp and the in-process Grid."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterable
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.serverapp import Grid, ServerApp

from coordinator.app import build_loop, initial_arrays
from coordinator.config import RunConfig
from coordinator.grid_view import SelectedNodesGrid
from coordinator.loop import LoopResult
from coordinator.secagg_exchange import SecAggRunStopped
from edge_client import energy
from edge_client.app import build_client_app
from edge_client.protocol import keys as k
from edge_client.protocol import secagg as sa
from edge_client.site_config import EnergySettings
from simulation.dropout import dropout_mod
from simulation.inprocess import run_inprocess

N = 8
BASE: dict[str, bool | int | float | str] = {
    "task": "breast-cancer-mlp",
    "num-clients": N,
    "clients-per-round": N,
    "num-server-rounds": 1,
    "learning-rate": 0.05,
    "partition": "iid",
    "seed": 3,
}
# Half a quantization step of the default clip (1.0) and bits (16).
QUANTIZATION = 0.5 / ((2**15 - 1) / 1.0)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models train 100x slower when torch's threads fight over two busy cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Intercept(SelectedNodesGrid):
    """A pass-through Grid that lets a test see and change every exchange."""

    def __init__(
        self,
        inner: Grid,
        *,
        before: Callable[[list[Message]], list[Message]] = lambda m: m,
        after: Callable[[list[Message]], list[Message]] = lambda r: r,
    ) -> None:
        super().__init__(inner, inner.get_node_ids())
        self.before, self.after = before, after

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies = list(self._inner.send_and_receive(self.before(list(messages)), timeout=timeout))
        return self.after(replies)


def run_loop(
    run_config: dict[str, bool | int | float | str],
    *,
    wrap: Callable[[Grid], Grid] | None = None,
    dropout: bool = False,
    mods: list | None = None,
) -> LoopResult:
    captured: dict[str, LoopResult] = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context) -> None:  # type: ignore[no-untyped-def]
        config = RunConfig.from_run_config(context.run_config)
        loop = build_loop(config, run_config=context.run_config)
        captured["result"] = loop.run(wrap(grid) if wrap else grid, initial_arrays(config))

    run_inprocess(
        server_app=server_app,
        client_app=build_client_app(mods=mods or ([dropout_mod] if dropout else [])),
        num_nodes=int(run_config["num-clients"]),
        run_config=run_config,
    )
    return captured["result"]


def flat(arrays: ArrayRecord) -> np.ndarray:
    return np.concatenate([arrays[key].numpy().ravel() for key in arrays])


def test_secagg_round_equals_plain_fedavg_within_quantization() -> None:
    """Prepare the same run with and without secagg; Assert the new global model is the
    same within half a quantization step and the round record counts every client."""
    plain = run_loop(BASE)
    secure = run_loop({**BASE, "secagg": True})
    diff = np.max(np.abs(flat(secure.arrays) - flat(plain.arrays)))
    assert 0 < diff <= QUANTIZATION * 1.01  # float32 storage adds ~1e-7 relative
    record = secure.rounds[0]
    assert (record.clients, record.selected, record.failures, record.applied) == (N, N, 0, True)
    assert record.extra["secagg_survivors"] == N
    assert record.extra["secagg_failed"] == 0


def test_coordinator_never_sees_plaintext_updates() -> None:
    """Record what clients send the coordinator; Assert no stage-3 reply carries model
    weights or num-examples, and the masked vectors look uniform, unlike the small
    integers of a quantized update."""
    seen: list[Message] = []

    def record(replies: list[Message]) -> list[Message]:
        seen.extend(replies)
        return replies

    run_loop({**BASE, "secagg": True}, wrap=lambda g: Intercept(g, after=record))
    masked = [m for m in seen if m.metadata.message_type == sa.MT_SECAGG_TRAIN]
    assert len(masked) == N
    for reply in masked:
        assert k.ARRAYS not in reply.content.array_records
        assert not reply.content.metric_records
        vector = reply.content.array_records[sa.SECAGG_MASKED][sa.SECAGG_VECTOR].numpy()
        signed = vector.view(np.int64)
        # a plaintext coordinate is |w·q| < 2^31 (w < 2^16, |q| < 2^15); masked ones are not
        assert np.count_nonzero(np.abs(signed) < 2**40) <= 1
        assert 0.45 < np.unpackbits(vector.view(np.uint8)).mean() < 0.55


def test_tampered_share_drops_its_receiver_and_the_round_completes() -> None:
    """Prepare a Grid that flips one bit of a share ciphertext sent to one client;
    Assert AES-GCM catches it, that client counts as dropped, no crash, and the model
    equals plain FedAvg over the other clients."""
    victim = 1003

    def tamper(messages: list[Message]) -> list[Message]:
        for m in messages:
            if m.metadata.message_type == sa.MT_SECAGG_TRAIN and m.metadata.dst_node_id == victim:
                record = m.content.config_records[sa.SECAGG]
                blobs = list(record[sa.SA_CIPHERTEXTS])  # type: ignore[arg-type]
                blobs[0] = blobs[0][:-1] + bytes([blobs[0][-1] ^ 1])
                m.content[sa.SECAGG] = ConfigRecord({**record, sa.SA_CIPHERTEXTS: blobs})
        return messages

    def without_victim(replies: list[Message]) -> list[Message]:
        return [r for r in replies if r.metadata.src_node_id != victim]

    secure = run_loop({**BASE, "secagg": True}, wrap=lambda g: Intercept(g, before=tamper))
    plain = run_loop(BASE, wrap=lambda g: Intercept(g, after=without_victim))
    record = secure.rounds[0]
    assert record.applied and record.clients == N - 1 and record.failures == 1
    assert record.extra["secagg_bad_shares"] == 1
    assert record.extra["secagg_dropped_input"] == 1
    assert np.max(np.abs(flat(secure.arrays) - flat(plain.arrays))) <= QUANTIZATION * 1.01


@pytest.mark.parametrize("stage", ["after-key-share", "after-masked-input"])
def test_tolerated_dropouts_give_the_survivors_exact_sum(stage: str) -> None:
    """Prepare 25% dropout at a stage; Assert the round applies and equals plain FedAvg
    with the same clients dropped (after-key-share) or all clients (after-masked-input)."""
    rc = {**BASE, "num-clients": 12, "clients-per-round": 12, "dropout": 0.25}
    rc["dropout-stage"] = stage
    secure = run_loop({**rc, "secagg": True}, dropout=True)
    plain = run_loop(rc, dropout=True)
    record = secure.rounds[0]
    assert record.applied and record.extra["secagg_failed"] == 0
    assert record.clients == plain.rounds[0].clients
    if stage == "after-key-share":
        assert record.extra["secagg_dropped_input"] > 0
    else:
        assert record.clients == 12 and record.extra["secagg_unmask_missing"] > 0
    assert np.max(np.abs(flat(secure.arrays) - flat(plain.arrays))) <= QUANTIZATION * 1.01


def test_beyond_tolerated_dropouts_the_round_fails_and_the_model_stays() -> None:
    """Prepare 80% dropout after key sharing; Assert both rounds fail cleanly, the model
    is the initial one, and the failure is in the round's metrics."""
    rc = {**BASE, "secagg": True, "num-server-rounds": 2, "dropout": 0.8, "seed": 4}
    result = run_loop(rc, dropout=True)
    config = RunConfig.from_run_config(rc)
    assert [r.applied for r in result.rounds] == [False, False]
    assert all(r.extra["secagg_failed"] == 1 and r.clients == 0 for r in result.rounds)
    assert np.array_equal(flat(result.arrays), flat(initial_arrays(config)))


def test_on_failure_stop_ends_the_run() -> None:
    rc = {**BASE, "secagg": True, "secagg-on-failure": "stop", "dropout": 0.8, "seed": 4}
    with pytest.raises(SecAggRunStopped, match="secagg-on-failure = stop"):
        run_loop(rc, dropout=True)


@pytest.mark.parametrize("strategy", ["fedprox", "fedadam"])
def test_sum_only_strategies_aggregate_the_synthetic_reply(strategy: str) -> None:
    plain = run_loop({**BASE, "strategy": strategy})
    secure = run_loop({**BASE, "strategy": strategy, "secagg": True})
    assert secure.rounds[0].applied
    tolerance = QUANTIZATION * 1.01 if strategy == "fedprox" else 0.02
    assert np.allclose(flat(secure.arrays), flat(plain.arrays), atol=tolerance)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"secagg-threshold": 9, "secagg-degree": 6}, "lower --secagg-threshold"),
        ({"secagg-bits": 32, "secagg-max-weight": 2**31}, "overflows"),
        ({"clients-per-round": 2, "num-clients": 2}, "at least 3 clients"),
        ({"strategy": "fedmedian"}, "needs every client's update"),
        ({"strategy": "krum"}, "needs every client's update"),
        ({"strategy": "fedbuff"}, "synchronous"),
    ],
)
def test_bad_secure_aggregation_setups_fail_before_round_1(extra, message) -> None:
    rc = {**BASE, "secagg": True, **extra}
    with pytest.raises(ValueError, match=message):
        build_loop(RunConfig.from_run_config(rc), run_config=rc)


def test_sites_measured_energy_arrives_only_as_the_survivors_sum(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Prepare measuring sites (a fake tracker: each span a random few µWh at 400 g/kWh)
    and an outer mod that books, per node, what the site says it delivered (as its audit
    log does); Assert the round's energy is that sum, and no reply carries it in clear."""
    rng = random.Random(5)
    lock = threading.Lock()

    class Tracker:
        def __init__(self, settings: object) -> None:
            with lock:
                self.kwh = rng.uniform(1e-7, 1e-5)

        def start(self) -> None:
            pass

        def stop(self) -> None:
            self.final_emissions_data = SimpleNamespace(
                energy_consumed=self.kwh, emissions=self.kwh * 0.4
            )

    monkeypatch.setattr(energy, "TRACKER", Tracker)
    monkeypatch.setattr(energy, "site_energy", lambda context: EnergySettings(codecarbon=True))
    delivered: list[tuple[int, dict]] = []
    seen: list[Message] = []

    def ledger(message: Message, context: Context, call_next: Callable) -> Message:
        reply = call_next(message, context)
        sent = energy.sent_energy(context)
        if sent is not None:
            with lock:
                delivered.append((context.node_id, sent))
        return reply

    def record(replies: list[Message]) -> list[Message]:
        seen.extend(replies)
        return replies

    result = run_loop(
        {**BASE, "secagg": True, "num-server-rounds": 2},
        wrap=lambda g: Intercept(g, after=record),
        mods=[ledger, energy.energy_mod],
    )
    assert len(delivered) == 2 * N and {how["how"] for _, how in delivered} == {"masked"}
    assert len({node for node, _ in delivered}) == N
    for i, rnd in enumerate(result.rounds):
        own = delivered[i * N : (i + 1) * N]
        assert rnd.extra["energy_kwh"] == pytest.approx(sum(s["kwh"] for _, s in own), rel=1e-9)
        assert rnd.extra["co2_g"] == pytest.approx(sum(s["co2_g"] for _, s in own), rel=1e-9)
    assert not any(
        k.ENERGY_KWH in r
        for m in seen
        if not m.has_error()
        for r in m.content.metric_records.values()
    )
