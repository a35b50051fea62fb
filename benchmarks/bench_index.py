"""Benchmark EmbeddingIndex: all-points k-NN refresh (build + knn_all) per method.

Data ("trained", the default): clustered unit-norm embeddings shaped like a trained one on
its own training set: N/50 classes of ~50 points around random unit centres in d=64, each
class spread in its own random 8-dimensional subspace (s.d. 0.4 per direction) plus
isotropic noise 0.02. Then 1-NN label accuracy is 1.0 (training classes separate, as after
a few epochs) and ~75-85 % of a 32-NN list is same-class: the tail of every list reaches
into neighbouring classes, at nearly equal distances, which is what makes recall@32 hard.
``--isotropic`` instead spreads each class isotropically over all 64 dimensions (s.d.
0.17 per direction; 1-NN accuracy ~0.9, about half of a 32-NN list same-class), like an
embedding early in training: much harder for every approximate method.

Every (N, method) runs in its own subprocess so that its peak RSS is its own.
Quality (recall@k, ED, position error with true ranks, IE per query) comes from
``EmbeddingIndex.quality(k, num_queries)``; "refresh IE" divides the exact refresh CPU
time by the method's, measured in the same run. Times are single-thread by default (see
``--threads``); "CPU/2" projects them onto 2 idle cores.

    python benchmarks/bench_index.py                      # N = 10k, 100k
    python benchmarks/bench_index.py --sizes --million    # N = 1M only (approximate methods)
    python benchmarks/bench_index.py --threshold          # exact vs HNSW, 10k-80k ("auto")
    python benchmarks/bench_index.py --sweep              # HNSW/IVF parameters at N = 100k
    python benchmarks/bench_index.py --isotropic --sizes 100000
    python benchmarks/bench_index.py --incremental [--million] [--glyphs]   # see bench_refresh.py
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
POINTS_PER_CLASS = 50
SUBSPACE_DIM, SUBSPACE_SPREAD, ISO_NOISE = 8, 0.4, 0.02
ISOTROPIC_SPREAD = 0.17


def clustered_embeddings(num_points: int, dim: int, seed: int = 0, isotropic: bool = False):
    """``(Tensor[N, d] unit-norm, LongTensor[N])``, see the module docstring."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    num_classes = max(1, num_points // POINTS_PER_CLASS)
    centres = torch.nn.functional.normalize(torch.randn(num_classes, dim, generator=gen), dim=1)
    labels = torch.randint(0, num_classes, (num_points,), generator=gen)
    x = centres[labels]
    if isotropic:
        x.add_(ISOTROPIC_SPREAD * torch.randn(num_points, dim, generator=gen))
    else:
        bases = torch.linalg.qr(torch.randn(num_classes, dim, SUBSPACE_DIM, generator=gen))[0]
        spread = SUBSPACE_SPREAD * torch.randn(num_points, SUBSPACE_DIM, generator=gen)
        for start in range(0, num_points, 65536):  # bounded [chunk, d, r] gather
            rows = slice(start, start + 65536)
            x[rows] += torch.einsum("nr,ndr->nd", spread[rows], bases[labels[rows]])
        x.add_(ISO_NOISE * torch.randn(num_points, dim, generator=gen))
    return torch.nn.functional.normalize(x, dim=1, out=x), labels


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT))
    from pml_ext import EmbeddingIndex

    x, labels = clustered_embeddings(args.n, args.dim, isotropic=args.isotropic)
    base = _rss_mb()
    params = json.loads(args.params)
    search_sets = json.loads(args.search_params) if args.search_params else [{}]
    index = EmbeddingIndex(args.method, num_threads=args.threads, seed=0, **params, **search_sets[0])
    start, cpu = time.perf_counter(), time.process_time()
    index.build(x, labels)
    build, build_cpu = time.perf_counter() - start, time.process_time() - cpu
    # Search-time parameters (efSearch, nprobe) are read at every search: one build serves all.
    for search in search_sets:
        index.faiss_params.update(search)
        start, cpu = time.perf_counter(), time.process_time()
        index.knn_all(args.k)
        search_time, search_cpu = time.perf_counter() - start, time.process_time() - cpu
        peak = _rss_mb()
        quality = index.quality(args.k, num_queries=args.queries) if args.queries else {}
        print(json.dumps({"n": args.n, "data": "isotropic" if args.isotropic else "trained",
                          "method": args.method, "resolved": index.resolved_method,
                          "params": {**params, **search}, "build": build, "search": search_time,
                          "refresh": build + search_time,
                          "refresh_cpu": build_cpu + search_cpu, "peak_rss_mb": peak,
                          "extra_rss_mb": peak - base, **quality}), flush=True)


def run_child(n, method, params, args, search_params=None):
    cmd = [sys.executable, __file__, "--child", "--n", str(n), "--method", method,
           "--params", json.dumps(params), "--k", str(args.k), "--dim", str(args.dim),
           "--threads", str(args.threads), "--queries", str(args.queries)]
    if args.isotropic:
        cmd.append("--isotropic")
    if search_params:
        cmd += ["--search-params", json.dumps(search_params)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        print(out.stderr, file=sys.stderr)
        return []
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    for row in rows:
        print(_fmt_row(row), flush=True)
    return rows


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


HEADER = ("| N | data | method | params | build s | knn_all s | refresh s (wall) | refresh CPU s | CPU/2 s | "
          "recall@k | ED | PE | IE/query | refresh IE (CPU) | peak RSS MB (over data) |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def _fmt_row(r, exact_cpu=None):
    ie = None if exact_cpu is None else exact_cpu / r["refresh_cpu"]
    params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "defaults"
    return (f"| {r['n']:,} | {r['data']} | {r['method']} ({r['resolved']}) | {params} | {r['build']:.2f} | "
            f"{r['search']:.2f} | {r['refresh']:.2f} | {r['refresh_cpu']:.2f} | {r['refresh_cpu'] / 2:.2f} | "
            f"{_fmt(r.get('recall'), '.4f')} | "
            f"{_fmt(r.get('relative_distance_error'), '.5f')} | {_fmt(r.get('position_error'), '.2e')} | "
            f"{_fmt(r.get('improvement_in_efficiency'), '.1f')} | {_fmt(ie, '.1f')} | "
            f"{r['peak_rss_mb']:.0f} ({r['extra_rss_mb']:+.0f}) |")


def main() -> None:
    if "--incremental" in sys.argv:  # the per-epoch refresh benchmark lives in its own script
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from bench_refresh import incremental

        incremental(sys.argv[1:])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--n", type=int, default=0)
    parser.add_argument("--method", default="exact")
    parser.add_argument("--params", default="{}")
    parser.add_argument("--search-params", default="")
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--million", action="store_true", help="add N=1M (approximate methods only)")
    parser.add_argument("--sweep", action="store_true", help="HNSW/IVF parameter sweep at N=100k")
    parser.add_argument("--threshold", action="store_true", help="exact vs HNSW at small N, for 'auto'")
    parser.add_argument("--isotropic", action="store_true", help="isotropic class noise (early-training-like)")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--dim", type=int, default=64)
    # One FAISS thread by default: on a machine shared with other jobs, OpenMP threads
    # spin against each other (2 threads measured slower than 1 here), while one thread's
    # CPU time is a stable measure of the work. "CPU/2" projects it onto 2 idle cores.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "index.md"))
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    print(HEADER)
    rows = []
    if args.sweep:
        n = 100_000
        rows += run_child(n, "exact", {}, args)
        for m, efc in ((8, 64), (12, 48), (16, 20), (16, 48), (16, 64), (24, 32)):
            rows += run_child(n, "hnsw", {"M": m, "efConstruction": efc}, args,
                              [{"efSearch": e} for e in (32, 40, 64)])
        rows += run_child(n, "ivf", {"nlist": 1024}, args, [{"nprobe": p} for p in (8, 16, 32)])
    elif args.threshold:
        for n in (10_000, 20_000, 40_000, 60_000, 80_000):
            rows += run_child(n, "exact", {}, args)
            rows += run_child(n, "hnsw", {}, args)
    else:
        sizes = list(args.sizes) + ([1_000_000] if args.million else [])
        for n in sizes:
            methods = ["exact", "hnsw", "ivf"] if n <= 100_000 else ["hnsw", "ivf"]
            for method in methods:
                rows += run_child(n, method, {}, args)
    exact = {r["n"]: r["refresh_cpu"] for r in rows if r["resolved"] == "exact"}
    table = "\n".join([HEADER] + [_fmt_row(r, exact.get(r["n"])) for r in rows])
    command = "python " + " ".join(["benchmarks/bench_index.py"] + sys.argv[1:])
    kind = "Parameter sweep" if args.sweep else "'auto' threshold" if args.threshold else "Refresh benchmark"
    text = (f"\n## {kind}, {'isotropic' if args.isotropic else 'trained'} data "
            f"({datetime.date(2026, 11, 23).isoformat()})\n\n"
            f"Command: `{command}` (k={args.k}, d={args.dim}, {args.threads} FAISS threads, quality on "
            f"{args.queries} queries; load average {os.getloadavg()[0]:.1f} on 2 cores at the end)\n\n{table}\n")
    print(text)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
