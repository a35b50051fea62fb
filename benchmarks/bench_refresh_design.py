"""The measurements behind ``EmbeddingIndex.refresh``'s design and defaults.

Uses the cached cases of ``bench_refresh.py`` (run ``bench_index.py --incremental --sizes
100000 --glyphs --glyph-epochs 2 3 4 5`` first: it writes the drifted embeddings and last
epoch's PyNNDescent graphs). Every part times the refresh's own functions on one machine
in one process, so the rows of a table are comparable with each other.

* ``chunks``: rows per chunk of ``refine_graph`` (the gathered block's size);
* ``ring``: the descent's settings (ring fan, random candidates, rounds) on synthetic drift
  at N=100k: time and recall@32 against exact search on 1,000 points;
* ``glyphs``: the same on real drift (glyph epochs E-1 -> E), with wider rings and a
  variant with reverse neighbours, against an exact 64-NN build of the new embeddings;
* ``exact``: the drift check's exact search, FAISS's flat index against the blocked
  matrix products of ``index_quality.brute_force_raw``.

    python benchmarks/bench_refresh_design.py --parts chunks ring glyphs exact --threads 2
"""
from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

from bench_refresh import CACHE, GLYPH_EPOCHS, _drop_own  # noqa: E402
from pml_ext.index.graph_refresh import CandidateScorer, refine_graph  # noqa: E402
from pml_ext.index.index_quality import brute_force_raw  # noqa: E402

K, WIDTH = 32, 64


def exact_lists(x: torch.Tensor, k: int, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Exact ``k``-NN (self dropped) of ``x[rows]`` (default all rows): ``LongTensor[R, k]``."""
    rows = torch.arange(x.shape[0]) if rows is None else rows
    sq, out = (x ** 2).sum(1), []
    for start in range(0, rows.numel(), 2000):
        part = rows[start:start + 2000]
        _, found = brute_force_raw(x, sq, x[part], k + 1, False)
        own = found == part.unsqueeze(1)
        own[~own.any(1), -1] = True
        out.append(found[~own].view(part.numel(), k))
    return torch.cat(out)


def recall(found: torch.Tensor, exact: torch.Tensor) -> float:
    return float((exact.unsqueeze(2) == found[:, :exact.shape[1]].unsqueeze(1)).any(2).float().mean())


def held(kept: torch.Tensor, exact: torch.Tensor) -> float:
    """Share of the new exact top k contained in the kept (wider) lists."""
    return float((exact.unsqueeze(2) == kept.unsqueeze(1)).any(2).float().mean())


def best_of(repeats: int, fn):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def synthetic_case(name: str):
    x, y = torch.load(CACHE / f"{name}.pt")
    graph = _drop_own(torch.load(CACHE / f"{name}_graph.pt"), WIDTH)
    return y.contiguous(), graph


def part_chunks(args) -> list[str]:
    y, graph = synthetic_case("100000_trained_0.05")
    lines = ["| rows per chunk | gathered block MB | refine s (best of 3) |", "|---|---|---|"]
    for rows in (128, 256, 512, 732, 1024, 2048, 4096):
        seconds, _ = best_of(3, lambda: refine_graph(y, graph, WIDTH, K, inner_product=False, fan=2, num_random=4,
                                                     rounds=2, chunk_rows=rows))
        lines.append(f"| {rows} | {rows * (WIDTH + 8) * (y.shape[1] + 1) * 4 / 2 ** 20:.1f} | {seconds:.2f} |")
    return lines


RING_SETTINGS = [(4, 4, 2), (2, 4, 2), (0, 4, 2), (0, 4, 1), (0, 0, 1)]


def part_ring(args) -> list[str]:
    lines = ["| data | fan x fan ring, random, rounds | refine s (best of 2) | recall@32 | kept lists held |",
             "|---|---|---|---|---|"]
    for name in ("100000_trained_0.05", "100000_iso_0.05"):
        y, graph = synthetic_case(name)
        rows = torch.randperm(y.shape[0], generator=torch.Generator().manual_seed(7))[:1000]
        exact = exact_lists(y, K, rows)
        for fan, num_random, rounds in RING_SETTINGS:
            seconds, (_, found, _) = best_of(2, lambda: refine_graph(
                y, graph, WIDTH, K, inner_product=False, fan=fan, num_random=num_random, rounds=rounds))
            lines.append(f"| {name} | {fan}x{fan}, {num_random}, {rounds} | {seconds:.2f} | "
                         f"{recall(found[rows], exact):.4f} | {held(graph[rows], exact):.3f} |")
    return lines


def reverse_lists(graph: torch.Tensor, fan: int, width: int) -> torch.LongTensor:
    """``LongTensor[N, width]``: up to ``width`` points that list the row among their first
    ``fan`` neighbours (the row itself where fewer do; the scorer masks it)."""
    n = graph.shape[0]
    target = graph[:, :fan].flatten()
    source = torch.arange(n).repeat_interleave(fan)
    order = torch.argsort(target, stable=True)
    target, source = target[order], source[order]
    counts = torch.bincount(target, minlength=n)
    slot = torch.arange(target.numel()) - (torch.cumsum(counts, 0) - counts)[target]
    keep = slot < width
    out = torch.arange(n).unsqueeze(1).repeat(1, width)
    out[target[keep], slot[keep]] = source[keep]
    return out


def reverse_descent(y, graph, rounds: int, fan: int, num_reverse: int, chunk: int = 700) -> torch.Tensor:
    """A descent whose candidates also hold reverse neighbours and their first neighbours."""
    scorer, n = CandidateScorer(y, False), y.shape[0]
    gen = torch.Generator().manual_seed(0)
    lists = graph
    for _ in range(rounds):
        rev = reverse_lists(lists, num_reverse, num_reverse)
        heads = torch.cat([lists[:, :fan], rev[:, :fan]], 1)
        out = []
        for start in range(0, n, chunk):
            rows = torch.arange(start, min(n, start + chunk))
            near = lists[rows]
            ring = heads[torch.cat([near[:, :fan], rev[rows, :fan]], 1)].reshape(rows.numel(), -1)
            cand = torch.cat([near, rev[rows], ring, torch.randint(0, n, (rows.numel(), 4), generator=gen)], 1)
            _, arg = scorer.top(rows, cand, WIDTH)
            out.append(cand.gather(1, arg))
        lists = torch.cat(out)
    return lists


def part_glyphs(args) -> list[str]:
    snapshots = torch.load(CACHE / f"glyph_epochs_{GLYPH_EPOCHS}.pt")
    lines = ["| epochs | descent | s | recall@32 | kept lists held |", "|---|---|---|---|---|"]
    for epoch in range(2, GLYPH_EPOCHS + 1):
        x, y = snapshots[epoch - 2], snapshots[epoch - 1]
        graph, exact = exact_lists(x, WIDTH), exact_lists(y, K)
        seconds, _ = best_of(1, lambda: exact_lists(y, WIDTH))
        tag = f"{epoch - 1} -> {epoch}"
        lines.append(f"| {tag} | exact 64-NN build (brute force) | {seconds:.2f} | 1.0000 | - |")
        runs = [(f"ring {f}x{f}, {r} random, {n} rounds",
                 lambda f=f, r=r, n=n: refine_graph(y, graph, WIDTH, K, inner_product=False, fan=f,
                                                    num_random=r, rounds=n)[1])
                for f, r, n in [(2, 4, 2), (4, 4, 2), (8, 8, 3), (16, 8, 4)]]
        runs += [(f"reverse {m}, ring {f}x{f} both ways, {n} rounds",
                  lambda m=m, f=f, n=n: reverse_descent(y, graph, n, f, m))
                 for m, f, n in [(16, 2, 2), (16, 4, 3)]]
        for name, fn in runs:
            seconds, found = best_of(1, fn)
            lines.append(f"| {tag} | {name} | {seconds:.2f} | {recall(found, exact):.4f} | {held(graph, exact):.3f} |")
    return lines


def part_exact(args) -> list[str]:
    import faiss

    lines = ["| N | queries | FAISS IndexFlat s | blocked products s | same lists |", "|---|---|---|---|---|"]
    faiss.omp_set_num_threads(args.threads)
    for n in (100_000, 1_000_000):
        x = torch.nn.functional.normalize(torch.randn(n, 64, generator=torch.Generator().manual_seed(0)), dim=1)
        q = x[:500].contiguous()
        flat = faiss.IndexFlatL2(64)
        flat.add(x.numpy())
        t_faiss, (_, want) = best_of(1, lambda: flat.search(q.numpy(), K + 1))
        t_torch, (_, got) = best_of(1, lambda: brute_force_raw(x, (x ** 2).sum(1), q, K + 1, False))
        same = float((torch.as_tensor(want) == got).float().mean())
        lines.append(f"| {n:,} | 500 | {t_faiss:.2f} | {t_torch:.2f} | {same:.4f} |")
    return lines


PARTS = {"chunks": part_chunks, "ring": part_ring, "glyphs": part_glyphs, "exact": part_exact}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parts", nargs="*", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "index_refresh.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python benchmarks/bench_refresh_design.py " + " ".join(argv or sys.argv[1:])
    text = f"\n### Design measurements ({datetime.date.today().isoformat()})\n\nCommand: `{command}` " \
           f"({args.threads} threads; load average {os.getloadavg()[0]:.1f} at the start)\n"
    for part in args.parts:
        lines = PARTS[part](args)
        print("\n".join(lines), flush=True)
        text += f"\n**{part}**\n\n" + "\n".join(lines) + "\n"
    with open(args.out, "a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
