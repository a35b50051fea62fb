"""The ablations behind the re-judged claims, each run from a tuned method file with one change.

``--part lifted``: the lifted loss over trunk x normalised/raw embeddings x margin x batch
layout (m images per character in the batch of 64), starting from the tuned
``lifted_structure`` (normalised) and ``lifted_structure_raw`` files.

``--part smart``: loss and mining judged apart. The tuned fixed-kappa smart mining file
(``smart_mining_fixed_kappa``: SmartBatchSampler batches of Algorithm 1's triplets) trained with
its own loss (ratio triplet + global), with the ratio loss alone, and with PML's
TripletMarginLoss on the same triplet batches (the miner hands the loss the batch's
[anchor, positive, negative] rows either way); and the paper's baseline, the file's loss and
settings on random triplets (``mined_fraction: 0``).

``--part controller``: read from the final runs of ``smart_mining`` (bench_tuning.py): per
epoch, the kappa used, the training error e the controller steers on (the mean over the
epoch's batches of the current network's fraction of active triplets, measured at use time)
and the same fraction on the stale index embeddings the epoch's triplets were mined from.

Runs are appended to ``results/ablations_runs.json`` and skipped when there; an interrupted
run resumes from its checkpoint.

    python benchmarks/bench_ablations.py --part lifted --seeds 0 --folder ablations
    python benchmarks/bench_ablations.py --part smart --seeds 0 1 2 --folder ablations
    python benchmarks/bench_ablations.py --part controller --folder tuning
"""
from __future__ import annotations

import argparse
import glob
import itertools
import json
import pathlib
import sqlite3
import statistics
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_tuning import MAIN_TRUNK, method_files, record_run  # noqa: E402

RUNS = ROOT / "benchmarks" / "results" / "ablations_runs.json"
TRUNKS = ("glyph_cnn", MAIN_TRUNK)
MARGINS = {"lifted_structure": (1.0, 1.94), "lifted_structure_raw": (1.0, 1.26)}  # the paper's 1 and the tuned file's
LAYOUTS = (2, 8)


def lifted_runs() -> list[tuple[dict, list]]:
    out = []
    methods = {m["key"]: m for m in method_files(list(MARGINS))}
    for trunk, key, layout in itertools.product(TRUNKS, MARGINS, LAYOUTS):
        for margin in MARGINS[key]:
            run = {"part": "lifted", "trunk": trunk, "key": key, "neg_margin": margin, "m": layout}
            overrides = list(methods[key]["config"].items()) + [
                ("loss_funcs~APPLY~3", {"neg_margin": margin}), ("sampler~APPLY~2", {"m": layout})]
            out.append((run, overrides))
    return out


def smart_runs() -> list[tuple[dict, list]]:
    files = {m["key"]: m for m in method_files(["smart_mining_fixed_kappa", "pml_triplet_semihard"])}
    method, triplet = files["smart_mining_fixed_kappa"], files["pml_triplet_semihard"]
    loss = method["config"]["loss_funcs~OVERRIDE~"]["metric_loss"]["MultipleLosses"]["losses"]
    margin = loss["ratio"]["RatioTripletLoss"]["margin"]
    # TripletMarginLoss's margin is a distance, not the ratio loss's: its own tuned value (semi-hard file)
    triplet_margin = triplet["config"]["loss_funcs~OVERRIDE~"]["metric_loss"]["TripletMarginLoss"]["margin"]
    variants = {
        "ratio + global (the file)": {},
        "ratio only": {"metric_loss": {"RatioTripletLoss": {"margin": margin}}},
        f"PML TripletMarginLoss (margin {triplet_margin})": {"metric_loss": {"TripletMarginLoss": {"margin": triplet_margin}}},
    }
    out = []
    for label, loss_funcs in variants.items():
        extra = [("loss_funcs~OVERRIDE~", loss_funcs)] if loss_funcs else []
        out.append(({"part": "smart", "trunk": MAIN_TRUNK, "key": method["key"], "loss": label},
                    list(method["config"].items()) + extra))
    # the paper's baseline: the same loss and settings on random triplets (no mined ones)
    out.append(({"part": "smart", "trunk": MAIN_TRUNK, "key": method["key"],
                 "loss": "ratio + global on random triplets"},
                list(method["config"].items()) + [("sampler~APPLY~2", {"mined_fraction": 0.0})]))
    return out


def train(parts: list[tuple[dict, list]], seeds: list[int], folder: pathlib.Path, num_threads: int | None) -> None:
    for seed in seeds:
        for run, overrides in parts:
            name = "_".join(str(v).replace(" ", "").replace("(", "").replace(")", "").replace("+", "_")
                            for v in run.values())
            record_run(RUNS, {**run, "seed": seed}, folder, pathlib.Path(run["part"], f"seed{seed}", name), overrides,
                       num_threads)


def _mean_sd(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if len(values) < 2:
        return f"{values[0]:.3f}" if values else "-"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(part: str, factors: list[str]) -> str:
    runs = [r for r in (json.loads(RUNS.read_text()) if RUNS.is_file() else []) if r["part"] == part]
    groups: dict[tuple, list] = {}
    for r in runs:
        groups.setdefault(tuple(r[f] for f in factors), []).append(r)
    lines = ["| " + " | ".join(factors) + " | seeds | test MAP@R | P@1 |", "|" + "---|" * (len(factors) + 3)]
    for values, rows in groups.items():
        lines.append("| " + " | ".join(map(str, values)) + f" | {len(rows)} | {_mean_sd([r['MAP@R'] for r in rows])}"
                     f" | {_mean_sd([r['P@1'] for r in rows])} |")
    return "\n".join(lines)


def controller_table(folder: pathlib.Path) -> str:
    """Per seed and epoch: kappa used, e on the current network (mean over the epoch's batches),
    e on the stale index embeddings (the update that mined the epoch's triplets)."""
    lines = ["| seed | epoch | kappa used | e, current network (steered on) | e, stale index embeddings |",
             "|---|---|---|---|---|"]
    for db in sorted(glob.glob(str(folder / "final" / MAIN_TRUNK / "seed*" / "smart_mining" / "*" / "saved_csvs"
                                   / "logs.db"))):
        seed = pathlib.Path(db).parts[-5]
        with sqlite3.connect(db) as con:
            table_name = next(t for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
                              if "SmartMiner" in t and "modules" not in t)
            rows = con.execute(f"SELECT kappa, fraction_active, epoch_fraction_active FROM {table_name}").fetchall()
        per_epoch = len(rows) // 10
        for epoch in range(10):
            chunk = rows[epoch * per_epoch:(epoch + 1) * per_epoch]
            lines.append(f"| {seed[4:]} | {epoch + 1} | {chunk[-1][0]:.3g} | "
                         f"{statistics.mean(r[1] for r in chunk):.3f} | {chunk[-1][2]:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["lifted", "smart", "controller", "report"], required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--folder", default="ablations")
    parser.add_argument("--num_threads", type=int, default=None)
    args = parser.parse_args()
    folder = pathlib.Path(args.folder).resolve()
    if args.part == "lifted":
        train(lifted_runs(), args.seeds, folder, args.num_threads)
    elif args.part == "smart":
        train(smart_runs(), args.seeds, folder, args.num_threads)
    elif args.part == "controller":
        print(controller_table(folder))
    else:
        print(table("lifted", ["trunk", "key", "neg_margin", "m"]))
        print()
        print(table("smart", ["loss"]))


if __name__ == "__main__":
    main()
