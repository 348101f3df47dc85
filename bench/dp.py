"""DP-SGD cost at a site: one local epoch of ``digits-cnn``, plain SGD vs DP-SGD.

Side by side, in one run on this machine, each variant in its own fresh process
(so peak memory is its own):

* ``plain``     — ``tasks.train_local`` (minibatch SGD, what a non-private client runs);
* ``hooks``     — ``edge_client.dp_training.train_dp_local`` with Opacus 1.6's
  ``PrivacyEngine`` in hooks mode (per-layer per-sample-gradient hooks);
* ``functorch`` — the same with Opacus's functorch grad sampler;
* ``ghost``     — the same with Opacus's ghost clipping (per-sample norms without
  per-sample gradients, two backward passes) — the client's default;
* ``vmap``      — a peer outside Opacus's grad samplers: whole-model per-sample
  gradients with ``torch.func.vmap(grad(...))`` fed to Opacus's ``DPOptimizer``
  (same clipping and noise). Not used by the client; it shows how much of the cost is
  the per-sample gradients themselves rather than Opacus's hooks.

Every DP variant uses Poisson sampling at rate ``1 / ceil(n / B)``, noise multiplier
1.0 and clipping norm 1.0 on the whole training split (1,437 records). With one torch
thread; the ratio ``× plain`` is of the best process CPU time over ``--repeats`` epochs
(on a shared, loaded machine CPU time measures the work, wall time mostly the
neighbours; best and median wall time are shown too). Peak memory is the rise of the
process's max RSS over its state after loading data and model.

Run: ``python bench/dp.py [--batch-sizes 16,64 --repeats 7]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable

VARIANTS = ("plain", "hooks", "functorch", "ghost", "vmap")


def _vmap_epoch(model, x, y, *, batch_size: int) -> None:  # type: ignore[no-untyped-def]
    import torch
    from opacus.optimizers import DPOptimizer
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler
    from torch import nn
    from torch.func import functional_call, grad, vmap

    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    loss_fn = nn.CrossEntropyLoss()

    def loss_one(p, b, xi, yi):  # type: ignore[no-untyped-def]
        return loss_fn(functional_call(model, (p, b), (xi.unsqueeze(0),)), yi.unsqueeze(0))

    per_sample = vmap(grad(loss_one), in_dims=(None, None, 0, 0))
    optimizer = DPOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.05),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_batch_size=batch_size,
        loss_reduction="mean",
    )
    n = len(x)
    sampler = UniformWithReplacementSampler(num_samples=n, sample_rate=1 / -(-n // batch_size))
    for idx in sampler:
        optimizer.zero_grad(True)
        index = torch.as_tensor(idx, dtype=torch.long)
        grads = (
            per_sample({k: v.detach() for k, v in params.items()}, buffers, x[index], y[index])
            if len(index)
            else None
        )
        for name, p in params.items():
            p.grad_sample = grads[name] if grads is not None else torch.zeros((0, *p.shape))
        optimizer.step()


def worker(variant: str, batch_size: int, repeats: int) -> dict[str, float | list[float]]:
    """Run ``repeats`` epochs of ``variant`` in this process; times and memory."""
    warnings.filterwarnings("ignore")
    import opacus  # noqa: F401 - same imports for every variant: equal RSS baselines
    import torch

    from edge_client.dp_training import train_dp_local
    from tasks import get_task, train_local

    torch.set_num_threads(1)
    spec = get_task("digits-cnn")
    data = spec.load_data(0)
    x, y = data.x_train, data.y_train
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def epoch() -> None:
        torch.manual_seed(0)
        model = spec.build_model()
        if variant == "plain":
            train_local(model, x, y, epochs=1, batch_size=batch_size, learning_rate=0.05, seed=0)
        elif variant == "vmap":
            _vmap_epoch(model, xt, yt, batch_size=batch_size)
        else:
            train_dp_local(
                model,
                x,
                y,
                epochs=1,
                batch_size=batch_size,
                learning_rate=0.05,
                noise_multiplier=1.0,
                max_grad_norm=1.0,
                grad_sample_mode=variant,  # type: ignore[arg-type]
            )

    base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        epoch()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"times": times, "cpu": cpu, "peak_extra_mib": (peak_kib - base_kib) / 1024}


def _run_worker(variant: str, batch_size: int, repeats: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", variant, "--batch-sizes", str(batch_size),
         "--repeats", str(repeats)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", default="16,64")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.worker:
        print(json.dumps(worker(args.worker, batch_sizes[0], args.repeats)))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    variants = [v for v in args.variants.split(",") if v]
    rows: list[dict] = []
    for batch_size in batch_sizes:
        results: dict[str, dict] = {}
        for variant in variants:
            with console.status(f"batch {batch_size}: {variant} × {args.repeats} epochs"):
                results[variant] = _run_worker(variant, batch_size, args.repeats)
        base = min(results["plain"]["cpu"]) if "plain" in results else None
        base_mem = results["plain"]["peak_extra_mib"] if "plain" in results else None
        for variant, r in results.items():
            best_cpu = min(r["cpu"])
            rows.append(
                {
                    "batch": batch_size,
                    "variant": variant,
                    "cpu_s": best_cpu,
                    "wall_s": min(r["times"]),
                    "median_wall_s": statistics.median(r["times"]),
                    "ratio": best_cpu / base if base else float("nan"),
                    "peak_mib": r["peak_extra_mib"],
                    "mem_ratio": r["peak_extra_mib"] / base_mem if base_mem else float("nan"),
                }
            )
    table = Table(title="digits-cnn, one local epoch (1,437 records), 1 torch thread")
    for column in (
        "batch",
        "variant",
        "CPU s",
        "× plain",
        "wall s (best)",
        "wall s (median)",
        "peak MiB",
        "mem × plain",
    ):
        table.add_column(column, justify="left" if column == "variant" else "right")
    fmt: Callable[[float], str] = lambda v: f"{v:.2f}"  # noqa: E731
    for row in rows:
        table.add_row(
            str(row["batch"]),
            row["variant"],
            f"{row['cpu_s']:.3f}",
            fmt(row["ratio"]),
            f"{row['wall_s']:.3f}",
            f"{row['median_wall_s']:.3f}",
            f"{row['peak_mib']:.1f}",
            fmt(row["mem_ratio"]),
        )
    console.print(table)
    console.print(json.dumps(rows))


if __name__ == "__main__":
    main()
