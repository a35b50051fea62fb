"""The glyph trunks' accuracy/time frontier: PML's semi-hard baseline on each trunk.

Trains the main job's baseline (PML TripletMarginLoss + semi-hard TripletMarginMiner, the
bundled method file) with ``pml-ext run``'s code path on each trunk below, for each seed, at
the main job's budget (equal epochs and batches for every trunk), and reports test MAP@R and
P@1 (mean ± sd over the seeds). Cost per trunk: CPU seconds of one training step (batch 64,
trunk + embedder, forward and backward, one thread; CPU time is far less sensitive than wall
time to other jobs on the machine), and each run's wall seconds per epoch (evaluations
included) with the load it ran beside.

Every finished (trunk, seed) run is appended to ``results/trunks_runs.json`` (written to a
temporary name and renamed), and a later call skips the runs already there: a long study can
be stopped and continued. The table and plot are built from every recorded run of this budget.

    python benchmarks/bench_trunks.py --seeds 0 1 2        # results/trunks.md, trunks.png
    python benchmarks/bench_trunks.py --seeds 0 --quick    # a smoke run (1 epoch of 4 batches), writes under /tmp
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
from bench_glyphs import run_seeds  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "trunks.md"
EMBEDDER = {"MLP": {"layer_sizes": [64]}}
# name -> the trunk's config; from the main job's GlyphCNN up to about 6x its cost per image.
TRUNKS = {
    "GlyphCNN 32-64-128, stride 2 (the first main job's)": {"GlyphCNN": {"channels": [32, 64, 128], "strides": [2, 2, 2]}},
    "GlyphPoolCNN 16-32-64-64 (main job)": {"GlyphPoolCNN": {"channels": [16, 32, 64, 64], "pools": [True, True, True, False]}},
    "GlyphPoolCNN 32-64-128": {"GlyphPoolCNN": {"channels": [32, 64, 128], "pools": [True, True, True]}},
    "GlyphPoolCNN 32-64-128-128 (default)": {"GlyphPoolCNN": {"channels": [32, 64, 128, 128],
                                                              "pools": [True, True, True, False]}},
    "GlyphPoolCNN 44-88-176-176": {"GlyphPoolCNN": {"channels": [44, 88, 176, 176], "pools": [True, True, True, False]}},
}
# The frontier keeps the semi-hard file's settings from before the tuning (margins 0.2, m 4, Adam
# 1e-3), so that every trunk, measured before or after it, is trained alike.
FRONTIER_SETTINGS = [
    ("loss_funcs~OVERRIDE~", {"metric_loss": {"TripletMarginLoss": {"margin": 0.2}}}),
    ("mining_funcs~OVERRIDE~", {"tuple_miner": {"TripletMarginMiner": {"margin": 0.2, "type_of_triplets": "semihard"}}}),
    ("sampler~OVERRIDE~", {"MPerClassSampler": {"m": 4}}),
    ("optimizers~APPLY~3", {"lr": 0.001}),
]


def _mean_sd(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _write_atomically(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def step_cpu_seconds(trunk_config: dict, rounds: int = 5, repeats: int = 4) -> float:
    """Median CPU seconds of one training step (batch 64, forward + backward), one thread."""
    import torch
    import pml_ext

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        (name, kwargs), = trunk_config.items()
        torch.manual_seed(0)
        trunk = getattr(pml_ext, name)(**kwargs)
        model = torch.nn.Sequential(trunk, pml_ext.MLP([trunk.output_size, 64]))
        batch = torch.rand(64, 1, 32, 32)
        model(batch).square().sum().backward()  # warm-up
        times = []
        for _ in range(rounds):
            start = time.process_time()
            for _ in range(repeats):
                model(batch).square().sum().backward()
            times.append((time.process_time() - start) / repeats)
        return statistics.median(times)
    finally:
        torch.set_num_threads(threads)


def train_missing(seeds: list[int], budget: dict, runs_path: pathlib.Path) -> list[dict]:
    """Train every (trunk, seed) of this budget not yet in ``runs_path``; returns all its runs."""
    runs = json.loads(runs_path.read_text()) if runs_path.exists() else []
    overrides = [*FRONTIER_SETTINGS, ("num_epochs_train", budget["epochs"]), ("num_threads", budget["threads"])]
    if budget["iterations"]:
        overrides += [("save_interval", 1), ("trainer~APPLY~2", {"iterations_per_epoch": budget["iterations"]})]
    for name, trunk in TRUNKS.items():
        for seed in seeds:
            if any(r["trunk"] == name and r["seed"] == seed and r["budget"] == budget for r in runs):
                continue
            load = os.getloadavg()[0]
            by_seed = run_seeds([seed], methods=["pml_triplet_semihard"],
                                overrides=[*overrides, ("models~OVERRIDE~", {"trunk": trunk, "embedder": EMBEDDER})])
            (rows, *_), = by_seed.values()
            row = next(r for r in rows if r["method"].startswith("PML TripletMarginLoss"))
            runs.append({"trunk": name, "seed": seed, "budget": budget, "MAP@R": row["MAP@R"], "P@1": row["P@1"],
                         "s/epoch": row["wall time (s)"] / budget["epochs"], "load at start": round(load, 1),
                         "date": str(datetime.date.today())})
            _write_atomically(runs_path, json.dumps(runs, indent=1) + "\n")
    return [r for r in runs if r["budget"] == budget]


def plot(rows: list[tuple[str, float, list[float]]], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, step_seconds, maps in rows:
        sd = statistics.stdev(maps) if len(maps) > 1 else 0.0
        ax.errorbar(step_seconds * 1000, statistics.mean(maps), yerr=sd, fmt="o", capsize=3, label=name)
    ax.set_xlabel("CPU ms per training step (batch 64, one thread)")
    ax.set_ylabel("test MAP@R (semi-hard baseline)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each training run")
    parser.add_argument("--quick", action="store_true", help="1 epoch of 4 batches: checks the script only")
    parser.add_argument("--output", default=None, help="the table's path (default results/trunks.md; "
                                                       "with --quick, a temporary folder)")
    args = parser.parse_args()
    import torch

    output = pathlib.Path(args.output or (pathlib.Path(tempfile.mkdtemp()) / "trunks.md" if args.quick else RESULTS))
    if not output.parent.is_dir():
        parser.error(f"--output: the folder {output.parent} does not exist")
    budget = {"epochs": 1 if args.quick else 10, "iterations": 4 if args.quick else None, "threads": args.threads}
    runs = train_missing(args.seeds, budget, output.with_name(output.stem + "_runs.json"))
    lines = ["# Glyph trunks: the accuracy/time frontier", "",
             f"Command: `python benchmarks/bench_trunks.py --seeds {' '.join(map(str, args.seeds))} --threads "
             f"{args.threads}{' --quick' if args.quick else ''}` (resumable: runs recorded in "
             f"`{output.stem}_runs.json`); table written {datetime.date.today()}; torch {torch.__version__}.", "",
             "PML TripletMarginLoss + semi-hard miner (the baseline file's settings before tuning: margins 0.2, m 4, "
             "Adam 1e-3) at the main job's budget and "
             "embedder (MLP to 64-d) on every trunk; test classes, final epoch, mean ± sd over the seeds. Step "
             "cost: median CPU ms of one training step (batch 64, one thread), measured when the table is written. "
             "Wall s/epoch: each run's wall time (evaluations included) over its epochs, with the 1-min load "
             "average at its start (other jobs on the machine slow it).", "",
             "| trunk | seeds | MAP@R | P@1 | step (CPU ms) | wall s / epoch | load at start |",
             "|---|---|---|---|---|---|---|"]
    plotted = []
    for name, trunk in TRUNKS.items():
        mine = [r for r in runs if r["trunk"] == name]
        if not mine:
            continue
        step = step_cpu_seconds(trunk)
        maps = [r["MAP@R"] for r in mine]
        plotted.append((name, step, maps))
        lines.append(f"| {name} | {len(mine)} | {_mean_sd(maps)} | {_mean_sd([r['P@1'] for r in mine])} | "
                     f"{step * 1000:.0f} | {_mean_sd([r['s/epoch'] for r in mine], 1)} | "
                     f"{', '.join(str(r['load at start']) for r in mine)} |")
    plot(plotted, output.with_suffix(".png"))
    lines += ["", f"![MAP@R against CPU ms per step]({output.with_suffix('.png').name})", ""]
    text = "\n".join(lines) + "\n"
    print(text)
    _write_atomically(output, text)


if __name__ == "__main__":
    main()
