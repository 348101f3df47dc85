"""Round time of secure aggregation against plain FedAvg and against Flower's SecAgg+.

    python bench/secagg.py            # full table (n = 100 and 1,000; 100k and 1M params)
    python bench/secagg.py --quick    # n = 100 only, and Flower at n = 50

Every row is one federated round of the same task — an MLP of about 100k or 1M
parameters, 32 synthetic samples per client, one local epoch of SGD — run by the
in-process engine (the same Grid for every contender):

- ``plain``: fedfleet's round loop with FedAvg;
- ``secagg``: the same loop with ``secagg = true`` (SecAgg+: X25519, Shamir, AES-GCM,
  ChaCha20 masks, K = 2⌈log2 n⌉ neighbours, 16-bit quantization) — 10% of the clients
  drop after sharing keys unless ``--no-dropout``, so the unmasking stage also
  recovers dropped clients' masks;
- ``flower plain`` / ``flower secagg+``: Flower 1.42's legacy ``DefaultWorkflow`` with
  its default fit workflow or with ``SecAggPlusWorkflow``, a ``NumPyClient`` training
  the same model on the same data, with ``secaggplus_mod``; SecAgg+ once with the same
  K+1 shares and threshold as fedfleet, once with the complete graph
  (``num_shares = 1.0``, Bonawitz's SecAgg: at n = 50 by default, at n = 100 with
  ``--complete-100``).

Times are this process's CPU seconds (wall seconds in brackets) for one round: the
whole in-process run of one round for fedfleet (train exchange, aggregation, central
evaluation), the fit workflow for Flower. The engine is single-threaded (torch uses one
thread), so CPU time is the round time an idle machine would show, and it is far less
sensitive than wall time to other jobs on a shared machine. Ratios: secagg / plain of the
same system, and Flower SecAgg+ / fedfleet SecAgg+. One round each (best of two at
n <= 100).
"""

from __future__ import annotations

import argparse
import functools
import gc
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from torch import nn

from tasks.base import Dataset, TaskSpec, TrainDefaults
from tasks.registry import register_task

SAMPLES_PER_CLIENT = 32
INPUTS = 64
CLASSES = 10
HIDDEN = {"100k": 270, "1M": 960}  # 64→H→H→10 MLP: 93k and 994k parameters


def _mlp(hidden: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(INPUTS, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, CLASSES),
    )


def _data_for(max_clients: int):  # type: ignore[no-untyped-def]
    @functools.lru_cache(maxsize=2)
    def load(seed: int = 0) -> Dataset:
        rng = np.random.default_rng(seed)
        n = max_clients * SAMPLES_PER_CLIENT
        teacher = rng.normal(size=(INPUTS, CLASSES))
        x = rng.normal(size=(n + 512, INPUTS)).astype(np.float32)
        y = np.argmax(x @ teacher, axis=1).astype(np.int64)
        return Dataset(x_train=x[:n], y_train=y[:n], x_test=x[n:], y_test=y[n:])

    return load


def register_bench_tasks(max_clients: int) -> None:
    load = _data_for(max_clients)  # one cached dataset for both models
    for size, hidden in HIDDEN.items():
        register_task(
            TaskSpec(
                name=f"bench-mlp-{size}",
                description=f"benchmark MLP of about {size} parameters",
                build_model=functools.partial(_mlp, hidden),
                load_data=load,
                num_classes=CLASSES,
                input_shape=(INPUTS,),
                defaults=TrainDefaults(learning_rate=0.05, batch_size=16, local_epochs=1),
            )
        )


def params_of(size: str) -> int:
    return sum(p.numel() for p in _mlp(HIDDEN[size]).parameters())


# -- fedfleet ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Timing:
    """Wall seconds and this process's CPU seconds (the in-process engine is one
    thread, so on an idle machine they agree; on a shared one CPU time is the steadier)."""

    wall: float
    cpu: float

    @staticmethod
    def best(a: Timing, b: Timing) -> Timing:
        return Timing(min(a.wall, b.wall), min(a.cpu, b.cpu))


INF = Timing(math.inf, math.inf)


def fedfleet_round(*, n: int, size: str, secagg: bool, dropout: float) -> tuple[Timing, str]:
    """Time of one round of fedfleet's loop (plain FedAvg or SecAgg+)."""
    from coordinator.app import build_server_app
    from edge_client.app import build_client_app
    from simulation.dropout import dropout_mod
    from simulation.inprocess import run_inprocess

    records: list[Any] = []
    run_config: dict[str, bool | int | float | str] = {
        "task": f"bench-mlp-{size}",
        "num-clients": n,
        "clients-per-round": n,
        "num-server-rounds": 1,
        "local-epochs": 1,
        "batch-size": 16,
        "seed": 1,
        "dropout": dropout,
        "dropout-stage": "after-key-share",
    }
    if secagg:
        run_config["secagg"] = True
        if n > 200:  # bound the coordinator's memory for masked vectors
            run_config["secagg-max-in-flight"] = 200
    wall, cpu = time.perf_counter(), time.process_time()
    run_inprocess(
        server_app=build_server_app(on_round=records.append),
        client_app=build_client_app(mods=[dropout_mod]),
        num_nodes=n,
        run_config=run_config,
    )
    timing = Timing(time.perf_counter() - wall, time.process_time() - cpu)
    record = records[-1]
    note = f"{record.clients}/{record.selected} clients"
    if secagg:
        note += f", Z_2^{int(record.extra.get('secagg_modulus_bits', 0))}"
        if record.extra.get("secagg_failed"):
            note += ", FAILED"
    return timing, note


# -- Flower's legacy workflows ---------------------------------------------------------
@dataclass
class _Timed:
    inner: object
    timing: Timing = INF

    def __call__(self, grid, context) -> None:  # type: ignore[no-untyped-def]
        wall, cpu = time.perf_counter(), time.process_time()
        self.inner(grid, context)  # type: ignore[operator]
        self.timing = Timing(time.perf_counter() - wall, time.process_time() - cpu)


def flower_round(
    *, n: int, size: str, secagg: bool, shares: int | float, threshold: int | float
) -> Timing:
    """Seconds of one fit round of Flower's legacy DefaultWorkflow (optionally SecAgg+)."""
    from flwr.client import NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.clientapp import ClientApp
    from flwr.common import Context, ndarrays_to_parameters
    from flwr.server import LegacyContext, ServerApp, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.server.workflow.default_workflows import default_fit_workflow

    from edge_client.data import partition_data
    from simulation.inprocess import run_inprocess
    from tasks import train_local

    task = f"bench-mlp-{size}"
    torch.manual_seed(1)
    initial = [p.detach().numpy().copy() for p in _mlp(HIDDEN[size]).state_dict().values()]

    class BenchClient(NumPyClient):
        def __init__(self, partition_id: int) -> None:
            self.partition_id = partition_id

        def fit(self, parameters, config):  # type: ignore[no-untyped-def]
            data = partition_data(
                task_name=task, partition_id=self.partition_id, num_partitions=n,
                partition="iid", seed=1,
            )  # fmt: skip
            model = _mlp(HIDDEN[size])
            keys = list(model.state_dict())
            model.load_state_dict(
                {k: torch.from_numpy(v) for k, v in zip(keys, parameters, strict=True)}
            )
            result = train_local(
                model, data.x_train, data.y_train, epochs=1, batch_size=16,
                learning_rate=0.05, seed=self.partition_id,
            )  # fmt: skip
            out = [v.detach().numpy() for v in model.state_dict().values()]
            return out, result.num_examples, {}

    def client_fn(context: Context):  # type: ignore[no-untyped-def]
        return BenchClient(int(context.node_config["partition-id"])).to_client()

    client_app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod] if secagg else [])
    fit = _Timed(
        SecAggPlusWorkflow(num_shares=shares, reconstruction_threshold=threshold)
        if secagg
        else default_fit_workflow
    )
    server_app = ServerApp()

    @server_app.main()
    def main(grid, context) -> None:  # type: ignore[no-untyped-def]
        strategy = FedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=n,
            min_available_clients=n,
            initial_parameters=ndarrays_to_parameters(initial),
        )
        legacy = LegacyContext(
            context=context, config=ServerConfig(num_rounds=1), strategy=strategy
        )
        DefaultWorkflow(fit_workflow=fit)(grid, legacy)

    run_inprocess(server_app=server_app, client_app=client_app, num_nodes=n, run_config={})
    return fit.timing


def warm_up(client_counts: set[int]) -> None:
    """Generate the data and partitions and run a small round, outside the timings."""
    from edge_client.data import cached_partitions

    for n in sorted(client_counts):
        for size in HIDDEN:
            cached_partitions(f"bench-mlp-{size}", n, "iid", 1)
    fedfleet_round(n=10, size="100k", secagg=True, dropout=0.1)


# -- the table ------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 100 only; Flower at n = 50")
    parser.add_argument("--no-dropout", action="store_true", help="no simulated dropouts")
    parser.add_argument("--no-flower", action="store_true", help="skip Flower's workflows")
    parser.add_argument("--repeat", type=int, default=2, help="best of R rounds at n <= 100")
    parser.add_argument(
        "--complete-100",
        action="store_true",
        help="also run Flower's complete-graph SecAgg+ at n = 100 (about 6 CPU minutes)",
    )
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    dropout = 0.0 if args.no_dropout else 0.1
    sizes = [(100, "100k"), (100, "1M")] + ([] if args.quick else [(1000, "100k"), (1000, "1M")])
    flower_sizes = [] if args.no_flower else ([50] if args.quick else [50, 100])
    register_bench_tasks(max(n for n, _ in sizes))
    warm_up({n for n, _ in sizes} | set(flower_sizes))
    started = time.perf_counter()
    print(
        f"one round each, best of {args.repeat} at n <= 100; {SAMPLES_PER_CLIENT} samples per "
        f"client, 1 local epoch; dropout {dropout:.0%} after key sharing; CPU (wall) seconds",
        flush=True,
    )
    print("| system | n | params | plain s | secagg s | secagg/plain | notes |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for n, size in sizes:
        plain, secure, note = INF, INF, ""
        for _ in range(args.repeat if n <= 100 else 1):  # best of: the machine is shared
            plain = Timing.best(
                plain, fedfleet_round(n=n, size=size, secagg=False, dropout=dropout)[0]
            )
            gc.collect()
            timing, note = fedfleet_round(n=n, size=size, secagg=True, dropout=dropout)
            secure = Timing.best(secure, timing)
            gc.collect()
        print(
            f"| fedfleet | {n} | {params_of(size):,} | {_fmt(plain)} | {_fmt(secure)} | "
            f"{secure.cpu / plain.cpu:.2f}x ({secure.wall / plain.wall:.2f}x) | {note} |",
            flush=True,
        )
    for n in flower_sizes:
        degree = min(n - 1, 2 * math.ceil(math.log2(n)))
        threshold = (degree + 1) // 2 + 1
        ours = INF
        for _ in range(args.repeat):
            ours = Timing.best(ours, fedfleet_round(n=n, size="100k", secagg=True, dropout=0.0)[0])
        plain = flower_round(n=n, size="100k", secagg=False, shares=degree + 1, threshold=threshold)
        variants: list[tuple[str, int | float, int | float]] = [
            (f"same K+1 = {degree + 1} shares, T = {threshold}", degree + 1, threshold)
        ]
        if n <= 50 or args.complete_100:  # ~6 min of CPU at n = 100 (O(n²) work)
            variants.append(("complete graph (num_shares = 1.0), T = n/2", 1.0, 0.5))
        print(
            f"| fedfleet SecAgg+ | {n} | {params_of('100k'):,} | | {_fmt(ours)} | | "
            f"no dropout; K = {degree}, T = {threshold} |",
            flush=True,
        )
        for label, shares, t in variants:
            secure = flower_round(n=n, size="100k", secagg=True, shares=shares, threshold=t)
            print(
                f"| Flower legacy SecAgg+ | {n} | {params_of('100k'):,} | {_fmt(plain)} | "
                f"{_fmt(secure)} | {secure.cpu / plain.cpu:.2f}x "
                f"({secure.wall / plain.wall:.2f}x) | {label}: **{secure.cpu / ours.cpu:.1f}x** "
                f"({secure.wall / ours.wall:.1f}x) fedfleet's time |",
                flush=True,
            )
    print(f"total {time.perf_counter() - started:.0f}s")


def _fmt(t: Timing) -> str:
    return f"{t.cpu:.2f} ({t.wall:.2f})"


if __name__ == "__main__":
    main()
