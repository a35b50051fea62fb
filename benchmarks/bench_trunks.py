"""The glyph trunks' accuracy/time frontier: PML's semi-hard baseline on each trunk.

Trains the main job's baseline (PML TripletMarginLoss + semi-hard TripletMarginMiner, the
bundled method file) with ``pml-ext run``'s code path on each trunk below, for each seed, at
the main job's budget (equal epochs and batches for every trunk); reports test MAP@R and P@1
(mean ± sd over the seeds) and the method's wall seconds per epoch (its whole run, the two
evaluations included, divided by the epochs), and draws MAP@R against seconds per epoch.

    python benchmarks/bench_trunks.py --seeds 0 1 2     # writes results/trunks.md and trunks.png
    python benchmarks/bench_trunks.py --seeds 0 --quick # a smoke run: 1 epoch of 4 batches
"""
from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import statistics
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
from bench_glyphs import run_seeds  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "trunks.md"
EMBEDDER = {"MLP": {"layer_sizes": [64]}}
# name -> the trunk's config; from the main job's GlyphCNN up to about 6x its cost per image.
TRUNKS = {
    "GlyphCNN 32-64-128, stride 2 (main job)": {"GlyphCNN": {"channels": [32, 64, 128], "strides": [2, 2, 2]}},
    "GlyphPoolCNN 16-32-64-64": {"GlyphPoolCNN": {"channels": [16, 32, 64, 64], "pools": [True, True, True, False]}},
    "GlyphPoolCNN 32-64-128": {"GlyphPoolCNN": {"channels": [32, 64, 128], "pools": [True, True, True]}},
    "GlyphPoolCNN 24-48-96-96": {"GlyphPoolCNN": {"channels": [24, 48, 96, 96], "pools": [True, True, True, False]}},
    "GlyphPoolCNN 32-64-128-128 (default)": {"GlyphPoolCNN": {"channels": [32, 64, 128, 128],
                                                              "pools": [True, True, True, False]}},
}


def _mean_sd(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def measure(seeds: list[int], quick: bool) -> dict[str, dict[str, list[float]]]:
    """``{trunk name: {"MAP@R": [...], "P@1": [...], "s/epoch": [...]}}`` over the seeds."""
    epochs = 1 if quick else 10
    budget = [("num_epochs_train", epochs)]
    if quick:
        budget += [("save_interval", 1), ("trainer~APPLY~2", {"iterations_per_epoch": 4})]
    out = {}
    for name, trunk in TRUNKS.items():
        overrides = [*budget, ("models~OVERRIDE~", {"trunk": trunk, "embedder": EMBEDDER})]
        by_seed = run_seeds(seeds, methods=["pml_triplet_semihard"], overrides=overrides)
        rows = [next(r for r in rows if r["method"].startswith("PML TripletMarginLoss")) for rows, *_ in
                by_seed.values()]
        out[name] = {"MAP@R": [r["MAP@R"] for r in rows], "P@1": [r["P@1"] for r in rows],
                     "s/epoch": [r["wall time (s)"] / epochs for r in rows]}
    return out


def plot(results: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, figures in results.items():
        sd = statistics.stdev(figures["MAP@R"]) if len(figures["MAP@R"]) > 1 else 0.0
        ax.errorbar(statistics.mean(figures["s/epoch"]), statistics.mean(figures["MAP@R"]), yerr=sd, fmt="o",
                    capsize=3, label=name)
    ax.set_xlabel("seconds per epoch (2 threads)")
    ax.set_ylabel("test MAP@R (semi-hard baseline)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="1 epoch of 4 batches: checks the script only")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args()
    import torch

    load = os.getloadavg()[0]
    results = measure(args.seeds, args.quick)
    output = pathlib.Path(args.output)
    plot(results, output.with_suffix(".png"))
    lines = ["# Glyph trunks: the accuracy/time frontier", "",
             f"Command: `python benchmarks/bench_trunks.py --seeds {' '.join(map(str, args.seeds))}"
             f"{' --quick' if args.quick else ''}`; date {datetime.date.today()}; torch {torch.__version__}; "
             f"1-min load average at start {load:.1f}.", "",
             "PML TripletMarginLoss + semi-hard miner (the main job's baseline file), the main job's budget and "
             "embedder (MLP to 64-d) on every trunk; test classes, final epoch, mean ± sd over the seeds. "
             "Seconds per epoch: the method's wall time (two evaluations included) over its epochs.", "",
             "| trunk | MAP@R | P@1 | s / epoch |", "|---|---|---|---|"]
    for name, figures in results.items():
        lines.append(f"| {name} | {_mean_sd(figures['MAP@R'])} | {_mean_sd(figures['P@1'])} | "
                     f"{_mean_sd(figures['s/epoch'], 1)} |")
    lines += ["", f"![MAP@R against seconds per epoch]({output.with_suffix('.png').name})", ""]
    text = "\n".join(lines) + "\n"
    print(text)
    tmp = output.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, output)


if __name__ == "__main__":
    main()
