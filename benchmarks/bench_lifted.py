"""Forward + backward time and peak memory of lifted structured losses.

    python benchmarks/bench_lifted.py [--sizes 64 128 256 512 1024 2048] [--pml-limit 60]

Each (method, B) runs in a fresh subprocess so its peak RSS is its own; "extra memory" is the
peak RSS minus the RSS right before the first step (inputs already allocated). Methods:
pml_ext's LiftedStructureLoss, PML's LiftedStructureLoss, PML's GeneralizedLiftedStructureLoss and
the floor (PML's LpDistance matrix, forward + backward, alone). d=128, 8 samples per class.
Prints a markdown table; ratios are taken within this one run. Times are the fastest of
--reps steps after a warm-up (PML's class at B >= 256: one step).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

METHODS = ["pml_ext", "pml", "pml_generalized", "floor"]


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_one(method: str, batch_size: int, dim: int, reps: int, threads: int) -> dict:
    import torch
    from pytorch_metric_learning import distances, losses

    import pml_ext
    from pml_ext.utils.checks import check_embeddings

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(batch_size, dim, generator=g).requires_grad_()
    labels = torch.arange(batch_size) // 8
    if method == "pml_ext":
        fn = pml_ext.LiftedStructureLoss()
    elif method == "pml":
        fn = losses.LiftedStructureLoss()
    elif method == "pml_generalized":
        fn = losses.GeneralizedLiftedStructureLoss()
    else:
        dist = distances.LpDistance()
        fn = lambda e, _labels: dist(e).sum()  # noqa: E731

    base_rss = _rss_mb()
    times = []
    for _ in range(reps + (1 if reps > 1 else 0)):
        emb.grad = None
        t0 = time.perf_counter()
        fn(emb, labels).backward()
        times.append(time.perf_counter() - t0)
    if reps > 1:
        times = times[1:]  # warm-up
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"method": method, "B": batch_size, "seconds": min(times),
           "extra_mb": max(0.0, peak_rss - base_rss)}
    if method == "pml_ext":
        t0 = time.perf_counter()
        for _ in range(100):
            check_embeddings(emb)
        out["check_seconds"] = (time.perf_counter() - t0) / 100
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    # One thread: on a shared 2-core machine, 2 torch threads turn other load into spin-waits.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pml-limit", type=float, default=60.0,
                        help="skip PML's LiftedStructureLoss at sizes predicted to take longer (s)")
    parser.add_argument("--pml-memory-gb", type=float, default=20.0,
                        help="and at sizes predicted to need more memory than this (GB)")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        method, b = args.one[0], int(args.one[1])
        reps = 1 if method == "pml" and b >= 256 else args.reps
        print(json.dumps(run_one(method, b, args.dim, reps, args.threads)))
        return

    rows: dict[tuple[str, int], dict] = {}
    last_pml = None
    for b in args.sizes:
        for method in METHODS:
            if method == "pml" and last_pml is not None:
                # PML's intermediate is |P| x |N| ~ 7B * B^2: the time grows ~8x per doubling.
                predicted = last_pml["seconds"] * (b / last_pml["B"]) ** 3
                predicted_gb = last_pml["extra_mb"] * (b / last_pml["B"]) ** 3 / 1024
                if predicted > args.pml_limit or predicted_gb > args.pml_memory_gb:
                    rows[(method, b)] = {"skipped": f"predicted {predicted:.0f} s, {predicted_gb:.0f} GB"}
                    continue
            cmd = [sys.executable, __file__, "--one", method, str(b), "--dim", str(args.dim),
                   "--reps", str(args.reps), "--threads", str(args.threads)]
            res = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
            rows[(method, b)] = res
            if method == "pml":
                last_pml = res
            print(res, file=sys.stderr)

    def cell(method, b):
        r = rows.get((method, b), {})
        if "skipped" in r:
            return f"skipped ({r['skipped']})"
        return f"{r['seconds'] * 1e3:.1f} ms / {r['extra_mb']:.0f} MB"

    print("| B | pml_ext | PML LiftedStructureLoss | PML Generalized | floor (LpDistance) "
          "| PML / pml_ext | pml_ext / floor | NaN check / pml_ext step |")
    print("|---|---|---|---|---|---|---|---|")
    for b in args.sizes:
        ours, pml, floor = rows[("pml_ext", b)], rows[("pml", b)], rows[("floor", b)]
        speedup = f"{pml['seconds'] / ours['seconds']:.0f}x" if "seconds" in pml else "-"
        print(f"| {b} | {cell('pml_ext', b)} | {cell('pml', b)} | {cell('pml_generalized', b)} "
              f"| {cell('floor', b)} | {speedup} | {ours['seconds'] / floor['seconds']:.2f} "
              f"| {100 * ours['check_seconds'] / ours['seconds']:.2f} % |")


if __name__ == "__main__":
    main()
