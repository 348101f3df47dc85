"""Weighted average of many updates: the streaming kernel vs a stacked numpy.average.

Measures, in one run on this machine:

1. throughput (parameters aggregated per second) and peak extra memory for 100
   updates of 1M float32 parameters with
   - ``StreamingMean`` (strategies/aggregation.py: in-place multiply and add through a
     preallocated scratch),
   - a naive streaming loop ``acc += w * x`` (what Flower's FedAvg does),
   - ``numpy.average(numpy.stack(updates), weights=...)`` (the stacked peer);
2. the same at the strategy level, on Flower Messages (decoding included):
   ``StreamingAverage.aggregate_train`` vs Flower's ``FedAvg.aggregate_train``;
3. peak memory as the number of updates grows (streaming stays flat);
4. the goals (issue 18): ``StreamingAverage`` >= 1.5x Flower's ``FedAvg`` at the strategy
   level, with peak memory flat in the number of updates — each printed met / not met.

Peak memory is what ``tracemalloc`` sees numpy allocate during the aggregation (the
inputs already exist). Run: ``python bench/aggregation.py [--params 1000000 --updates 100]``.
"""

from __future__ import annotations

import argparse
import gc
import logging
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

from strategies.aggregation import StreamingMean

STRATEGY_GOAL = 1.5  # StreamingAverage.aggregate_train throughput / Flower FedAvg's


def _measure(fn: Callable[[], Any], repeats: int) -> tuple[float, int, Any]:
    """Best wall time over ``repeats`` and the peak traced allocation of one call."""
    gc.collect()
    tracemalloc.start()
    result = fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best, peak, result


def kernels(updates: list[np.ndarray], weights: np.ndarray, repeats: int) -> list[dict[str, Any]]:
    def fused() -> np.ndarray:
        mean = StreamingMean()
        for w, x in zip(weights, updates, strict=True):
            mean.add({"x": x}, float(w))
        return mean.result()["x"]

    def naive() -> np.ndarray:
        total = float(weights.sum())
        acc = np.zeros_like(updates[0])
        for w, x in zip(weights, updates, strict=True):
            acc += x * np.float32(w / total)
        return acc

    def stacked() -> np.ndarray:
        return np.average(np.stack(updates), axis=0, weights=weights)

    n, d = len(updates), updates[0].size
    rows = []
    reference = None
    for name, fn in [
        ("stacked numpy.average", stacked),
        ("naive streaming acc += w*x", naive),
        ("StreamingMean (in place, preallocated)", fused),
    ]:
        seconds, peak, result = _measure(fn, repeats)
        if reference is None:
            reference = result
        rows.append(
            {
                "method": name,
                "seconds": seconds,
                "params_per_s": n * d / seconds,
                "peak_mib": peak / 2**20,
                "max_abs_err": float(np.max(np.abs(result - reference))),
            }
        )
    return rows


def strategy_level(
    updates: list[np.ndarray], weights: np.ndarray, repeats: int
) -> list[dict[str, Any]]:
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.serverapp.strategy import FedAvg
    from flwr.supercore.task_identity import TaskIdentity

    from strategies.streaming import StreamingAverage

    logging.getLogger("flwr").setLevel(logging.WARNING)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    replies = []
    for i, (w, x) in enumerate(zip(weights, updates, strict=True)):
        instruction = Message(
            RecordDict({"config": ConfigRecord()}), dst_node_id=1000 + i, message_type="train"
        )
        content = RecordDict(
            {
                "arrays": ArrayRecord({"x": Array(x)}),
                "metrics": MetricRecord({"num-examples": float(w)}),
            }
        )
        replies.append(Message(content, reply_to=instruction))
    n, d = len(updates), updates[0].size
    kwargs = {"min_train_nodes": 1, "min_available_nodes": 1}
    rows = []
    for name, strategy in [
        ("Flower FedAvg.aggregate_train", FedAvg(**kwargs)),
        ("StreamingAverage.aggregate_train", StreamingAverage(**kwargs)),
    ]:
        seconds, peak, _ = _measure(lambda s=strategy: s.aggregate_train(1, replies), repeats)
        rows.append(
            {
                "method": name,
                "seconds": seconds,
                "params_per_s": n * d / seconds,
                "peak_mib": peak / 2**20,
            }
        )
    return rows


def memory_scaling(d: int, counts: list[int]) -> list[dict[str, Any]]:
    rng = np.random.default_rng(1)
    x = rng.standard_normal(d).astype(np.float32)
    rows = []
    for n in counts:
        updates = [x] * n  # the same buffer n times: inputs cost nothing extra
        weights = np.ones(n)

        def fused(updates: list[np.ndarray] = updates, weights: np.ndarray = weights) -> None:
            mean = StreamingMean()
            for w, u in zip(weights, updates, strict=True):
                mean.add({"x": u}, float(w))
            mean.result()

        def stacked(updates: list[np.ndarray] = updates, weights: np.ndarray = weights) -> None:
            np.average(np.stack(updates), axis=0, weights=weights)

        _, fused_peak, _ = _measure(fused, 0)
        _, stacked_peak, _ = _measure(stacked, 0)
        rows.append(
            {"updates": n, "fused_mib": fused_peak / 2**20, "stacked_mib": stacked_peak / 2**20}
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--updates", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    updates = [rng.standard_normal(args.params).astype(np.float32) for _ in range(args.updates)]
    weights = rng.integers(10, 500, size=args.updates).astype(np.float64)

    print(f"\n## Weighted average of {args.updates} updates x {args.params:,} float32 parameters\n")
    rows = kernels(updates, weights, args.repeats)
    base = rows[0]
    print("| method | seconds | params/s | vs stacked | peak extra MiB | max |err| |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['method']} | {r['seconds']:.3f} | {r['params_per_s'] / 1e9:.2f} G | "
            f"{r['params_per_s'] / base['params_per_s']:.1f}x | {r['peak_mib']:.1f} | {r['max_abs_err']:.1e} |"
        )

    print("\n## Strategy level: aggregate_train on Flower Messages (decoding included)\n")
    srows = strategy_level(updates, weights, args.repeats)
    print("| method | seconds | params/s | vs Flower | peak extra MiB |")
    print("|---|---:|---:|---:|---:|")
    for r in srows:
        print(
            f"| {r['method']} | {r['seconds']:.3f} | {r['params_per_s'] / 1e9:.2f} G | "
            f"{r['params_per_s'] / srows[0]['params_per_s']:.2f}x | {r['peak_mib']:.1f} |"
        )

    print(f"\n## Peak extra memory vs number of updates ({args.params:,} parameters)\n")
    print("| updates | streaming MiB | stacked MiB | ratio |")
    print("|---:|---:|---:|---:|")
    mrows = memory_scaling(args.params, [10, 50, args.updates])
    for r in mrows:
        print(
            f"| {r['updates']} | {r['fused_mib']:.1f} | {r['stacked_mib']:.1f} | "
            f"{r['stacked_mib'] / max(r['fused_mib'], 1e-9):.0f}x |"
        )

    print("\n## Goals\n")
    ratio = srows[1]["params_per_s"] / srows[0]["params_per_s"]
    _goal(
        f"StreamingAverage.aggregate_train >= {STRATEGY_GOAL}x Flower FedAvg.aggregate_train "
        f"(decoding included): {ratio:.2f}x",
        ratio >= STRATEGY_GOAL,
    )
    few, many = mrows[0]["fused_mib"], mrows[-1]["fused_mib"]
    _goal(
        f"O(model) memory: streaming peak {few:.1f} MiB at {mrows[0]['updates']} updates, "
        f"{many:.1f} MiB at {mrows[-1]['updates']}",
        many <= few * 1.05 + 0.5,
    )


def _goal(text: str, met: bool) -> None:
    print(f"- {text}: {'met' if met else 'NOT MET'}")


if __name__ == "__main__":
    main()
