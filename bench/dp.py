"""DP-SGD cost at a site: one local epoch of ``digits-cnn``, plain SGD vs DP-SGD.

Side by side, in one run on this machine, each variant in its own fresh process
(so peak memory is its own):

* ``plain``     — ``tasks.train_local`` (minibatch SGD, what a non-private client runs);
* ``hooks``     — ``edge_client.dp_training.train_dp_local`` with Opacus 1.6's
  ``PrivacyEngine`` in hooks mode (per-layer per-sample-gradient hooks);
* ``functorch`` — the same with Opacus's functorch grad sampler;
* ``fused``     — the same with ``privacy.dp.fused`` (Opacus's mechanism, ghost norms
  from each layer's inputs and output gradients, no per-sample linear gradients);
* ``ghost``     — the same with Opacus's ghost clipping (per-sample norms without
  per-sample gradients, two backward passes) — the fastest Opacus mode on this model;
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

The default run (``--before TREE``) prints the issue-18 goal table instead: DP-SGD over
plain, in CPU seconds, at batch 16 and 64, for

* ``simulation`` — a cohort of 20 ``digits-cnn`` clients (the training split cut in
  20, ~71 records each), one local epoch, trained through ``simulation.cohort.run_cohort``
  as the in-process engine does: plain = ``train_local`` calls (batched), DP =
  ``train_dp_local`` calls (batched across the cohort where the code has
  ``simulation/batched_dp.py``, else Opacus one client after another);
* ``site`` — one site's epoch on the whole training split: plain ``train_local`` against
  ``train_dp_local`` in the mode the site runs by default (``dp-grad-sample-mode``;
  ``auto`` where the code has ``edge_client/dp_modes.py``: ``fused`` for digits-cnn
  since ``privacy/dp/fused.py``), the mode shown next to the code;

each for the code in ``TREE`` (e.g. ``git worktree add /tmp/dp-before <main>``) and for
this checkout, with the goal ≤ 2.5× met / not met. ``--modes`` prints the per-mode
table above.

Run: ``python bench/dp.py --before /tmp/dp-before`` or
``python bench/dp.py --modes [--task digits-cnn --batch-sizes 16,64 --repeats 7]``.
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

VARIANTS = ("plain", "fused", "hooks", "functorch", "ghost", "vmap")
GOAL = 2.5  # issue 18: DP-SGD at most 2.5x plain
COHORT = 20
REPO = __file__.rsplit("/bench/", 1)[0]


def _goal_epoch(variant: str, batch_size: int):  # type: ignore[no-untyped-def]
    """A timed function for one goal-table variant (sim-plain, sim-dp, site-plain,
    site-dp) with this process's fedfleet code; the models are built outside it."""
    import copy

    import torch

    from edge_client.dp_training import train_dp_local
    from simulation.cohort import run_cohort
    from tasks import get_task, train_local

    spec = get_task("digits-cnn")
    data = spec.load_data(0)
    x, y = data.x_train, data.y_train
    torch.manual_seed(0)
    base = spec.build_model()
    mode = "ghost"  # main's default
    try:
        from edge_client.dp_modes import resolve_grad_sample_mode

        mode = resolve_grad_sample_mode("auto", task="digits-cnn")
    except ImportError:
        pass
    dp = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "grad_sample_mode": mode}
    n = len(x) // COHORT
    parts = [(x[c * n : (c + 1) * n], y[c * n : (c + 1) * n]) for c in range(COHORT)]

    def one(model, xs, ys, seed: int):  # type: ignore[no-untyped-def]
        if variant.endswith("plain"):
            return train_local(model, xs, ys, epochs=1, batch_size=batch_size,
                               learning_rate=0.05, seed=seed)  # fmt: skip
        return train_dp_local(model, xs, ys, epochs=1, batch_size=batch_size,
                              learning_rate=0.05, **dp)  # fmt: skip

    def prepare():  # type: ignore[no-untyped-def]
        if variant.startswith("site"):
            model = copy.deepcopy(base)
            return lambda: one(model, x, y, 0)
        models = [copy.deepcopy(base) for _ in parts]
        calls = [(lambda c=c: one(models[c], parts[c][0], parts[c][1], c)) for c in range(COHORT)]
        return lambda: run_cohort(calls)

    prepare.mode = mode if variant == "site-dp" else ""  # type: ignore[attr-defined]
    return prepare


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


def worker(
    variant: str, batch_size: int, repeats: int, task: str = "digits-cnn"
) -> dict[str, float | list[float]]:
    """Run ``repeats`` epochs of ``variant`` in this process; times and memory."""
    warnings.filterwarnings("ignore")
    import opacus  # noqa: F401 - same imports for every variant: equal RSS baselines
    import torch

    from edge_client.dp_training import train_dp_local
    from tasks import get_task, train_local

    torch.set_num_threads(1)
    spec = get_task(task)
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

    prepare = None
    if variant.startswith(("sim-", "site-")):
        prepare = _goal_epoch(variant, batch_size)
        prepare()()  # warm-up: first-call costs are not the steady state
    base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, cpu = [], []
    for _ in range(repeats):
        run = prepare() if prepare is not None else epoch
        t0, c0 = time.perf_counter(), time.process_time()
        run()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "times": times,
        "cpu": cpu,
        "peak_extra_mib": (peak_kib - base_kib) / 1024,
        "mode": getattr(prepare, "mode", ""),
    }


def _run_worker(
    variant: str, batch_size: int, repeats: int, tree: str = REPO, task: str = "digits-cnn"
) -> dict:
    import os

    env = {**os.environ, "PYTHONPATH": tree, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, __file__, "--worker", variant, "--batch-sizes", str(batch_size),
         "--repeats", str(repeats), "--task", task],
        capture_output=True, text=True, check=True, env=env, cwd=tree,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def _uptime() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def goal_table(before: str, batch_sizes: list[int], repeats: int) -> None:
    """DP/plain at each batch size, simulation and site, before and after, met/not met."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"DP-SGD / plain, digits-cnn, CPU s (best of {repeats}), goal ≤ {GOAL}×")
    for column in ("path", "batch", "code", "plain CPU s", "DP CPU s", "DP / plain", "goal"):
        table.add_column(column, justify="left" if column in ("path", "code") else "right")
    rows = []
    console.print(f"load average before: {_uptime()}")
    for path in ("simulation", "site"):
        prefix = "sim" if path == "simulation" else "site"
        for batch_size in batch_sizes:
            for code, tree in (("before", before), ("after", REPO)):
                plain = min(_run_worker(f"{prefix}-plain", batch_size, repeats, tree)["cpu"])
                dp_run = _run_worker(f"{prefix}-dp", batch_size, repeats, tree)
                dp = min(dp_run["cpu"])
                label = f"{code} ({dp_run['mode']})" if dp_run.get("mode") else code
                ratio = dp / plain
                verdict = "met" if ratio <= GOAL else "not met"
                rows.append({"path": path, "batch": batch_size, "code": label,
                             "plain_cpu_s": plain, "dp_cpu_s": dp, "ratio": ratio})  # fmt: skip
                table.add_row(path, str(batch_size), label, f"{plain:.3f}", f"{dp:.3f}",
                              f"{ratio:.2f}", verdict)  # fmt: skip
    console.print(table)
    console.print(f"load average after: {_uptime()}")
    console.print(json.dumps(rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", default="16,64")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--before", default=None, help="checkout of the code to compare with")
    parser.add_argument("--modes", action="store_true", help="the per-Opacus-mode table")
    parser.add_argument("--task", default="digits-cnn", help="--modes: the task's model")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.worker:
        # bench/simulation.py would shadow the simulation package: import the tree's code
        here = __file__.rsplit("/", 1)[0]
        sys.path[:] = [p for p in sys.path if p.rstrip("/") != here]
        print(json.dumps(worker(args.worker, batch_sizes[0], args.repeats, args.task)))
        return
    if not args.modes:
        goal_table(args.before or REPO, batch_sizes, args.repeats)
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
                results[variant] = _run_worker(variant, batch_size, args.repeats, task=args.task)
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
    table = Table(title=f"{args.task}, one local epoch (training split), 1 torch thread")
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
