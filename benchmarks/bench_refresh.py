"""Benchmark the per-epoch all-points k-NN refresh (``bench_index.py --incremental``).

Each epoch the miners need every point's k nearest neighbours of the *new* embeddings,
while they still hold last epoch's lists. Compared side by side, each in its own
subprocess (so peak RSS is its own), on the same drifted embeddings:

* ``hnsw rebuild``: ``EmbeddingIndex("hnsw")`` build + ``knn_all`` from scratch;
* ``pynndescent cold``: ``NNDescent`` from scratch (after a JIT warm-up of both its code
  paths in the same process, timed separately: the "JIT s" column);
* ``pynndescent init_graph``: ``NNDescent(init_graph=last epoch's graph)``, in the same
  process after the cold run (so its peak RSS column is the process's peak so far);
* ``refresh``: ``EmbeddingIndex.refresh`` from last epoch's 2k-wide lists (the width it
  keeps by default), its sampled exact check and fallback rule included.

Drift: synthetic (``bench_index.clustered_embeddings`` rotated by ``expm(eps * S)``, S a
random skew matrix scaled to unit-order entries, plus Gaussian noise ``eps / 5`` per
direction, renormalised), or real (``--glyphs``: the training set's embeddings after two
consecutive epochs E-1 and E of a short glyph run, ``--glyph-epochs E ...``). Last epoch's graph is PyNNDescent's on the
previous embeddings (computed once per case and cached in a temp dir). recall@k is
measured against exact search on ``--queries`` random points of the new embeddings.
"""
from __future__ import annotations

import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
CACHE = pathlib.Path(tempfile.gettempdir()) / "pml_ext_bench_refresh"
METHODS = ("hnsw rebuild", "refresh")  # and PyNNDescent (cold, init_graph), always run first
GLYPH_EPOCHS = 5  # --glyph-epochs may ask for the drift into any of epochs 2..5


def drifted(n: int, dim: int, isotropic: bool, eps: float, seed: int = 0):
    """``(previous, new)`` unit-norm ``Tensor[N, d]`` embeddings (module docstring)."""
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_index import clustered_embeddings

    x, _ = clustered_embeddings(n, dim, seed=seed, isotropic=isotropic)
    gen = torch.Generator().manual_seed(seed + 1)
    skew = torch.randn(dim, dim, generator=gen)
    rotation = torch.linalg.matrix_exp(eps * (skew - skew.T) / 8)
    y = x @ rotation
    y.add_(eps / 5 * torch.randn(n, dim, generator=gen))
    return x, torch.nn.functional.normalize(y, dim=1)


def glyph_epochs(epochs: int = 2, seed: int = 0):
    """``[Tensor[N, d]] * epochs``: the glyph training set embedded after each of ``epochs`` epochs."""
    import torch
    from pytorch_metric_learning import losses, miners, samplers

    sys.path.insert(0, str(ROOT))
    from pml_ext import GlyphCNN, glyphs_split
    from pml_ext.utils.inference import compute_embeddings

    torch.manual_seed(seed)
    train, _, _ = glyphs_split(seed=seed)
    labels = train.labels
    model = torch.nn.Sequential(GlyphCNN(), torch.nn.Linear(128, 64))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn, miner = losses.TripletMarginLoss(margin=0.1), miners.TripletMarginMiner(margin=0.1)
    sampler = samplers.MPerClassSampler(labels, m=4, batch_size=64, length_before_new_iter=len(train))
    loader = torch.utils.data.DataLoader(train, batch_size=64, sampler=sampler)
    snapshots = []
    for _ in range(epochs):
        model.train()
        for images, y in loader:
            emb = model(images)
            loss = loss_fn(emb, y, miner(emb, y))
            opt.zero_grad()
            loss.backward()
            opt.step()
        embeddings, _ = compute_embeddings(model, train, batch_size=512)
        snapshots.append(torch.nn.functional.normalize(embeddings, dim=1))
    return snapshots


def case_embeddings(args):
    """Cached ``(previous, new)`` embeddings of the case."""
    import torch

    CACHE.mkdir(exist_ok=True)
    if args.glyphs:
        path = CACHE / f"glyph_epochs_{GLYPH_EPOCHS}.pt"
        if not path.exists():
            _save(glyph_epochs(GLYPH_EPOCHS), path)
        snapshots = torch.load(path)
        return snapshots[args.glyph_epoch - 2], snapshots[args.glyph_epoch - 1]
    path = CACHE / f"{_case_key(args)}.pt"
    if not path.exists():
        _save(drifted(args.n, args.dim, args.isotropic, args.eps), path)
    return torch.load(path)


def _case_key(args) -> str:
    if args.glyphs:
        return f"glyphs_{args.glyph_epoch}"
    return f"{args.n}_{'iso' if args.isotropic else 'trained'}_{args.eps}"


def _save(obj, path) -> None:
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def pynndescent_child(args) -> list[dict]:
    """Both PyNNDescent rows. Last epoch's graph is PyNNDescent's own on the previous
    embeddings (built first, which also compiles its kernels); it is cached for the others."""
    import numba
    import numpy as np
    import torch
    from pynndescent import NNDescent

    numba.set_num_threads(args.threads)
    x, y = case_embeddings(args)
    k, width = args.k, 2 * args.k
    # JIT warm-up: both code paths (cold and init_graph) on small random data.
    start = time.perf_counter()
    small = np.random.default_rng(0).random((3000, y.shape[1]), dtype=np.float32)
    warm = NNDescent(small, n_neighbors=k + 1, random_state=0, n_jobs=args.threads).neighbor_graph[0]
    NNDescent(small, n_neighbors=k + 1, random_state=0, n_jobs=args.threads, init_graph=warm)
    jit = time.perf_counter() - start
    previous = torch.as_tensor(NNDescent(x.numpy(), n_neighbors=width + 1, random_state=0,
                                         n_jobs=args.threads).neighbor_graph[0]).long()
    _save(previous, CACHE / f"{_case_key(args)}_graph.pt")
    del x
    rows = []
    runs = [("pynndescent cold", None), ("pynndescent init_graph", previous[:, :k + 1].numpy())]
    for method, init in runs[:1] if args.skip_init_graph else runs:
        base = _rss_mb()
        start, cpu = time.perf_counter(), time.process_time()
        graph = NNDescent(y.numpy(), n_neighbors=k + 1, random_state=0, n_jobs=args.threads,
                          init_graph=init).neighbor_graph[0]
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        rows.append(_row(args, method, wall, cpu, jit, y, _drop_own(torch.as_tensor(graph).long(), k), base))
    return rows


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT))
    from pml_ext import EmbeddingIndex
    # Imported before the clock starts (0.2 s, mostly PML's losses through its distributed
    # utilities), as in a training process, which has loaded them already.
    import pml_ext.index.index_refresh  # noqa: F401

    if args.method == "pynndescent":
        for row in pynndescent_child(args):
            print(json.dumps(row), flush=True)
        return
    graph_path = CACHE / f"{_case_key(args)}_graph.pt"
    if args.method == "prepare":  # its own process, so that its memory is not in the others' peaks
        if not graph_path.exists():
            _save(own_previous_graph(args), graph_path)
        return
    _, y = case_embeddings(args)
    previous = torch.load(graph_path)
    width = previous.shape[1] - 1
    previous = _drop_own(previous, width)  # last epoch's lists as the miners keep them: before the clock
    base, k = _rss_mb(), args.k
    start, cpu = time.perf_counter(), time.process_time()
    report = {}
    if args.method == "hnsw rebuild":
        _, indices = EmbeddingIndex("hnsw", num_threads=args.threads, seed=0).build(y).knn_all(k)
    else:
        index = EmbeddingIndex("hnsw", num_threads=args.threads, seed=0)
        _, indices = index.refresh(y, k, previous=previous, **json.loads(args.refresh_params))
        report = {**index.last_refresh, "previous_width": width}
        if json.loads(args.refresh_params):
            args.method = f"refresh {args.refresh_params}"
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(json.dumps(_row(args, args.method, wall, cpu, None, y, indices, base, report)), flush=True)


def own_previous_graph(args):
    """Last epoch's graph without PyNNDescent (``--own-previous``, for N=1M on a loaded
    machine): ``refine_graph`` on the previous embeddings, started from 2k random members
    of each point's class (the generator's labels), 3 rounds with an 8x8 ring. Its quality
    shows in the "previous lists' recall" column. Returns ``LongTensor[N, 2k + 1]``."""
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_index import clustered_embeddings
    from pml_ext.index.graph_refresh import refine_graph

    x, _ = case_embeddings(args)
    _, labels = clustered_embeddings(args.n, args.dim, seed=0, isotropic=args.isotropic)
    gen = torch.Generator().manual_seed(5)
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels)
    start = torch.cumsum(counts, 0) - counts
    width = 2 * args.k
    pick = (torch.rand(args.n, width, generator=gen) * counts[labels].unsqueeze(1)).long()
    init = order[start[labels].unsqueeze(1) + pick]
    _, graph, _ = refine_graph(x, init, width, args.k, inner_product=False, fan=8, rounds=3)
    return torch.cat([torch.arange(args.n).unsqueeze(1), graph], dim=1)


def _row(args, method, wall, cpu, jit, y, indices, base, report=None) -> dict:
    peak = _rss_mb()
    report = report or {}
    return {"case": _case_name(args), "method": method, "wall": wall, "cpu": cpu, "jit": jit,
            "recall": _sampled_recall(y, indices, args.k, args.queries), "peak_rss_mb": peak,
            "extra_rss_mb": peak - base, "mode": report.get("mode"), "own_recall": report.get("recall"),
            "previous_recall": report.get("previous_recall"), "previous_width": report.get("previous_width")}


def _drop_own(graph, k: int):
    """``[N, k+1]`` lists that may hold the row itself (even twice) -> ``[N, k]`` without it."""
    import torch

    own = graph == torch.arange(graph.shape[0]).unsqueeze(1)
    order = torch.argsort(own.to(torch.int8), dim=1, stable=True)  # own entries last
    return graph.gather(1, order)[:, :k]


def _sampled_recall(y, indices, k: int, queries: int) -> float:
    import faiss
    import numpy as np
    import torch

    rows = torch.randperm(y.shape[0], generator=torch.Generator().manual_seed(123))[:queries]
    flat = faiss.IndexFlatL2(y.shape[1])
    flat.add(np.ascontiguousarray(y.numpy()))
    _, exact = flat.search(np.ascontiguousarray(y[rows].numpy()), k + 1)
    exact = _drop_own_rows(torch.as_tensor(exact).long(), rows)
    return float((exact.unsqueeze(2) == indices[rows].unsqueeze(1)).any(2).float().mean())


def _drop_own_rows(found, rows):
    import torch

    own = found == rows.unsqueeze(1)
    own[~own.any(1), -1] = True
    return found[~own].view(found.shape[0], -1)


def _case_name(args) -> str:
    if args.glyphs:
        return f"glyphs, epochs {args.glyph_epoch - 1} -> {args.glyph_epoch}"
    return f"{args.n:,} {'isotropic' if args.isotropic else 'trained'}, eps={args.eps}"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


HEADER = ("| case | method | wall s | CPU s | JIT warm-up s | recall@k | refresh path (own sampled recall; "
          "previous lists' recall) | peak RSS MB (over data) |\n|---|---|---|---|---|---|---|---|")


def _fmt_row(r) -> str:
    path = "-" if r["mode"] is None else (f"{r['mode']} ({r['own_recall']:.3f}; {r['previous_recall'] or 0:.3f}, "
                                          f"{r.get('previous_width')} wide)")
    jit = "-" if r["jit"] is None else f"{r['jit']:.1f}"
    return (f"| {r['case']} | {r['method']} | {r['wall']:.2f} | {r['cpu']:.2f} | {jit} | {r['recall']:.4f} | "
            f"{path} | {r['peak_rss_mb']:.0f} ({r['extra_rss_mb']:+.0f}) |")


def run_cases(args, cases) -> list[dict]:
    """Every method on every case, each in its own subprocess; prints and returns the rows."""
    rows = []
    for case in cases:
        base = [sys.executable, __file__, "--k", str(args.k), "--dim", str(args.dim), "--threads",
                str(args.threads), "--queries", str(args.queries)] + case
        base += ["--skip-init-graph"] if args.skip_init_graph else []
        base += ["--own-previous"] if args.own_previous else []
        base += ["--refresh-params", args.refresh_params]
        # PyNNDescent first: it also builds (and caches) last epoch's graph for the others.
        first = ["prepare"] if args.own_previous or args.reuse_previous else ["pynndescent"]
        for method in first + [m for m in args.methods if not m.startswith("pynndescent")]:
            out = subprocess.run(base + ["--method", method], capture_output=True, text=True, check=False)
            if out.returncode != 0:
                print(out.stderr[-3000:], file=sys.stderr)
                continue
            for line in out.stdout.splitlines():
                if line.startswith("{"):
                    rows.append(json.loads(line))
                    print(_fmt_row(rows[-1]), flush=True)
    return rows


def incremental(argv) -> None:
    """``bench_index.py --incremental [--sizes N ...] [--million] [--eps E ...] [--glyphs] [--kinds ...]``."""
    import argparse
    import datetime

    parser = argparse.ArgumentParser(prog="bench_index.py --incremental")
    parser.add_argument("--incremental", action="store_true")
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000])
    parser.add_argument("--million", action="store_true")
    parser.add_argument("--kinds", nargs="*", default=["trained", "isotropic"])
    parser.add_argument("--eps", type=float, nargs="*", default=[0.05])
    parser.add_argument("--glyphs", action="store_true")
    parser.add_argument("--glyph-epochs", type=int, nargs="*", default=[2],
                        help=f"drift from epoch E-1 into E, E in 2..{GLYPH_EPOCHS}")
    parser.add_argument("--methods", nargs="*", default=list(METHODS), help="besides PyNNDescent")
    parser.add_argument("--skip-init-graph", action="store_true", help="PyNNDescent cold only (saves time at 1M)")
    parser.add_argument("--own-previous", action="store_true",
                        help="no PyNNDescent: last epoch's graph by own_previous_graph (N=1M on a loaded machine)")
    parser.add_argument("--reuse-previous", action="store_true",
                        help="no PyNNDescent rows: reuse the cached last epoch's graph of an earlier run")
    parser.add_argument("--refresh-params", default="{}", help="JSON of EmbeddingIndex.refresh settings")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "index_refresh.md"))
    args = parser.parse_args(argv)
    sizes = list(args.sizes) + ([1_000_000] if args.million else [])
    cases = [["--n", str(n), "--eps", str(eps)] + (["--isotropic"] if kind == "isotropic" else [])
             for n in sizes for kind in args.kinds for eps in args.eps]
    if args.glyphs:
        cases += [["--glyphs", "--glyph-epoch", str(e)] for e in args.glyph_epochs]
    print(HEADER)
    rows = run_cases(args, cases)
    command = "python " + " ".join(["benchmarks/bench_index.py"] + list(argv))
    text = (f"\n### Incremental refresh ({datetime.date.today().isoformat()})\n\n"
            f"Command: `{command}` (k={args.k}, d={args.dim}, {args.threads} thread(s) per method, recall on "
            f"{args.queries} exact queries; load average {os.getloadavg()[0]:.1f} on 2 shared cores at the end)"
            f"\n\n{HEADER}\n" + "\n".join(_fmt_row(r) for r in rows) + "\n")
    print(text)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(text)


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--isotropic", action="store_true")
    parser.add_argument("--eps", type=float, default=0.05)
    parser.add_argument("--glyphs", action="store_true")
    parser.add_argument("--glyph-epoch", type=int, default=2, choices=range(2, GLYPH_EPOCHS + 1))
    parser.add_argument("--skip-init-graph", action="store_true")
    parser.add_argument("--own-previous", action="store_true")
    parser.add_argument("--refresh-params", default="{}")
    parser.add_argument("--method", default=None)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--queries", type=int, default=2000)
    args = parser.parse_args(argv)
    if args.method:
        child(args)


if __name__ == "__main__":
    main()
