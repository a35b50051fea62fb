"""The glyph benchmark: render time and cache size, and the main job's table over seeds.

Render (``--part render``): a cold build of the default data set (``samples_per_font=2``)
and of the main job's (``samples_per_font=1``) into an empty cache folder, then a warm
load of each; the cache file sizes.

Main job (``--part main``): ``pml-ext run``'s code path (``ComparisonRunner`` on glyphs) once
per seed; every trained method against the untrained network and the raw pixels, mean and
sample sd over the seeds of each metric, and the main job's total wall time per seed.
The seed changes the network's initialisation and the batches; the data set (its
augmentation and class split) is the benchmark and stays fixed.

    python benchmarks/bench_glyphs.py                      # both parts, writes results/glyphs.md
    python benchmarks/bench_glyphs.py --part main --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import datetime
import logging
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "glyphs.md"
METRICS = ("P@1", "R@4", "MAP@R", "NMI")


def render_part() -> list[str]:
    from pml_ext import Glyphs
    from pml_ext.datasets.glyph_cache import cache_folder

    lines = ["## Rendering and cache", "",
             "| setting | samples (all classes) | classes | cold build (s) | warm load (s) | cache file (MB) |",
             "|---|---|---|---|---|---|"]
    folder = tempfile.mkdtemp(prefix="glyph_bench_")
    try:
        for spf in (2, 1):
            start = time.perf_counter()
            data = Glyphs(samples_per_font=spf, cache_dir=folder)
            cold = time.perf_counter() - start
            start = time.perf_counter()
            Glyphs(samples_per_font=spf, cache_dir=folder)
            warm = time.perf_counter() - start
            newest = max(pathlib.Path(cache_folder(folder)).glob("*.npz"), key=os.path.getmtime)
            lines.append(f"| samples_per_font={spf}{' (default)' if spf == 2 else ' (main job)'} | {len(data):,} | "
                         f"{data.num_classes:,} | {cold:.1f} | {warm:.2f} | {newest.stat().st_size / 1e6:.1f} |")
        lines += ["", f"Look-alike rule: {len(data.removed_lookalikes)} characters removed "
                      f"({''.join(data.removed_lookalikes[:40])} ...).", ""]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return lines


def run_seeds(seeds, methods=None, methods_folder=None, overrides=(), dataset="glyphs"):
    """``{seed: (rows, total wall time, histories)}`` from one ComparisonRunner run per seed."""
    from pml_ext.runner.report.comparison_runner import ComparisonRunner

    out = {}
    for seed in seeds:
        folder = tempfile.mkdtemp(prefix=f"glyph_main_{seed}_")
        try:
            start = time.perf_counter()
            result = ComparisonRunner(root_experiment_folder=folder, methods=methods, methods_folder=methods_folder,
                                      overrides=[("seed", seed), *overrides], dataset=dataset).run()
            out[seed] = (result["rows"], time.perf_counter() - start, result["histories"])
            print(f"seed {seed}: {out[seed][1]:.0f} s\n{result['table']}", flush=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return out


def _mean_sd(values: list, digits: int = 4) -> str:
    values = [v for v in values if v is not None and v == v]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def summarize(by_seed: dict, metrics=METRICS, extra_columns=()) -> list[str]:
    """A markdown table: one row per method, mean ± sd over the seeds of each metric."""
    methods = []
    for rows, *_ in by_seed.values():
        methods += [r["method"] for r in rows if r["method"] not in methods]
    columns = [m for m in metrics if any(m in r for rows, *_ in by_seed.values() for r in rows)]
    columns += list(extra_columns)
    lines = ["| method | " + " | ".join(columns) + " | wall time (s) |",
             "|---|" + "---|" * (len(columns) + 1)]
    for method in methods:
        picked = [next((r for r in rows if r["method"] == method), {}) for rows, *_ in by_seed.values()]
        cells = [_mean_sd([p.get(c) for p in picked]) for c in columns]
        cells.append(_mean_sd([p.get("wall time (s)") for p in picked], digits=1))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def main_part(seeds) -> list[str]:
    by_seed = run_seeds(seeds)
    totals = ", ".join(f"{t:.0f}" for _, t, _ in by_seed.values())
    lines = ["## The main job over seeds", "",
             f"`ComparisonRunner` on glyphs (the bundled configs: GlyphCNN + 64-d embedder, Adam 1e-3, batch 64, "
             f"the epochs of config_general/glyphs.yaml), seeds {', '.join(map(str, seeds))}; final epoch, test "
             f"classes. Mean ± sd over the seeds.", ""]
    lines += summarize(by_seed)
    lines += ["", f"Main job total wall time per seed (s): {totals} (target: at most 300).", ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("render", "main", "all"), default="all")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sys.path.insert(0, str(ROOT))
    load = os.getloadavg()[0]
    import torch

    lines = ["# Glyph benchmark", "",
             f"Command: `python benchmarks/bench_glyphs.py --part {args.part}"
             f"{' --seeds ' + ' '.join(map(str, args.seeds)) if args.part != 'render' else ''}`; date "
             f"{datetime.date.today()}; torch {torch.__version__}; 1-min load average at start {load:.1f}.", ""]
    if args.part in ("render", "all"):
        lines += render_part()
    if args.part in ("main", "all"):
        lines += main_part(args.seeds)
    text = "\n".join(lines) + "\n"
    print(text)
    pathlib.Path(args.output).write_text(text)


if __name__ == "__main__":
    main()
