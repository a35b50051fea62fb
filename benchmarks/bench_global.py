"""Global mining against PML's best tuned recipes on glyphs: accuracy and what the mining costs.

Every recipe starts from a tuned method file of ``pml_ext/configs/comparison/`` (its loss,
miner and learning rates, tuned on val by bench_tuning.py) and changes only where its batches
come from:

- ``mper``: the file as tuned, PML's ``MPerClassSampler`` (the reference);
- ``hard``: ``ClassHardBatchSampler`` (c classes x m, groups of a seed class and classes drawn
  among its nearest class centres, a share of random classes), centres from the
  ``EmbeddingBank`` the training passes fill (no separate embedding pass), fixed hardness.
  The name spells the settings: ``c16m4s4k8r0.5`` = 16 classes x 4 samples, groups of 4
  (a seed and 3 others), near classes among the 8 nearest centres, half of them random;
  suffixes ``-e2`` (centres every 2nd epoch), ``-f1`` (centres from a fresh pass, not the
  bank), ``-z1`` (no staleness measurement), ``-t0.1`` (the controller's target);
- ``ramp``: the same with ``random_share`` on a ``LinearSchedule`` (all random, then a linear
  ramp to the fixed recipe's share);
- ``ctrl``: the same with ``random_share`` steered by an ``AdaptiveController`` toward a
  target training error (the miner's fraction of active tuples, through ``FractionActiveMeter``);
- ``hn``: the tuned loss on ``HardNeighborSampler`` batches from the bank (``p`` random positive
  pairs, each member with its nearest negatives);
- ``bank``: the global-index methods (smart mining, hard-neighbour batches) fed by the bank
  instead of a fresh pass over the training set (``file``: the method file as bundled, with
  the fresh pass).

Stages (all resumable: finished runs are kept in ``results/global_runs.json`` and skipped, an
interrupted run continues from its checkpoint; one process per ``--folder`` and ``--losses``):

    python benchmarks/bench_global.py --stage grid --folder global --num_threads 1 --losses ms iso
    python benchmarks/bench_global.py --stage grid --folder global --recipes ms/hn/p16 iso/ramp/c32m2s4k8r0.5
    python benchmarks/bench_global.py --stage final --recipes ms/hard/... --trunk glyph_pool_cnn_small
    python benchmarks/bench_global.py --stage overhead --folder global_time      # an idle machine
    python benchmarks/bench_global.py --stage report

``grid`` trains each recipe of the grid once (seed 0, main trunk) and evaluates val only; the
recipe with the best val MAP@R per loss and mode goes to ``final`` (3 seeds, val and test, test
reported at the epoch val chose). ``overhead`` times whole runs, alternated and repeated: the
reference at ``--epochs`` short and long (their difference over the epochs between is its
epoch time) and each recipe at the long count (its difference to the reference, per epoch, is
the mining overhead per epoch); each run evaluates val once, at its end.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_tuning import MAIN_TRUNK, _mean_sd, _write_atomically, method_files, record_run  # noqa: E402

RUNS = ROOT / "benchmarks" / "results" / "global_runs.json"
TIMES = ROOT / "benchmarks" / "results" / "global_overhead.json"
STRONG_TRUNK = "glyph_pool_cnn"
# The tuned files whose loss (and miner) each recipe keeps.
LOSSES = {"ms": "pml_multi_similarity", "iso": "isometric_hard_miner", "con": "pml_contrastive",
          "semi": "pml_triplet_semihard", "xbm": "pml_xbm_contrastive"}
BANK_METHODS = ("smart_mining", "smart_mining_fixed_kappa", "lifted_hard_neighbors")
# Class-level hard batches: c classes x m, groups of `s` classes (a seed and s-1 near ones drawn
# among its k nearest centres), a share r of the non-seed classes random.
HARD_DEFAULT = {"c": 32, "m": 2, "s": 4, "k": 8, "r": 0.5}
HARD_GRID = [{}, {"r": 0.0}, {"r": 0.75}, {"k": 4}, {"k": 16}, {"s": 2}, {"s": 8}, {"c": 16, "m": 4}]


def hard_name(loss: str, mode: str, point: dict) -> str:
    p = {**HARD_DEFAULT, **point}
    tail = "".join(f"{k}{p[k]:g}" for k in ("c", "m", "s", "k", "r"))
    extra = "".join(f"-{k}{v:g}" for k, v in sorted(point.items()) if k not in HARD_DEFAULT)
    return f"{loss}/{mode}/{tail}{extra}"


def parse_recipe(name: str) -> tuple[str, str, dict]:
    """``"ms/hard/c32m2s4k8r0.5-t0.4"`` -> ``("ms", "hard", {c: 32, ..., t: 0.4})``."""
    import re

    loss, mode, *rest = name.split("/")
    point = {}
    if rest:
        head, *extras = rest[0].split("-")
        point = {k: float(v) for k, v in re.findall(r"([a-z]+)([0-9.]+)", head)}
        point.update({e[0]: float(e[1:]) for e in extras})
    return loss, mode, point


def sampler_overrides(point: dict) -> list:
    p = {**HARD_DEFAULT, **point}
    spec = {"classes_per_batch": int(p["c"]), "samples_per_class": int(p["m"]), "classes_per_seed": int(p["s"]),
            "neighbours": int(p["k"]), "random_share": float(p["r"])}
    if "e" in p:
        spec["refresh_every"] = int(p["e"])
    bank = {"source": "fresh"} if p.get("f") else {}  # f1: centres from a fresh pass, for comparison
    if p.get("z"):  # z1: no staleness measurement (its 512 fresh rows a refresh)
        bank["staleness_sample"] = 0
    return [("sampler~OVERRIDE~", {"ClassHardBatchSampler": spec}), ("embedding_bank", bank)]


def metered_miner(loss_key: str, config: dict) -> tuple[list, str]:
    """Overrides wrapping the file's miner in a ``FractionActiveMeter`` (the controller's error)."""
    miners = config.get("mining_funcs~OVERRIDE~") or {}
    inner = miners.get("tuple_miner")
    if not inner:
        raise SystemExit(f"{loss_key}: a controlled recipe needs a file with a tuple_miner")
    loss_margin = None
    if "IsometricHardMiner" in inner:  # one triplet per anchor: the share with a non-zero margin loss
        loss_margin = config["loss_funcs~OVERRIDE~"]["metric_loss"]["TripletMarginLoss"]["margin"]
    meter = {"miner": inner, **({"loss_margin": loss_margin} if loss_margin is not None else {})}
    return [("mining_funcs~OVERRIDE~", {"tuple_miner": {"FractionActiveMeter": meter}})], "fraction_active"


def recipe_overrides(name: str) -> list:
    """The overrides of recipe ``name`` (see the module doc)."""
    loss, mode, point = parse_recipe(name)
    if mode in ("bank", "file"):  # a global-index method file fed by the bank, or as bundled (a fresh pass)
        method = method_files([loss])[0]
        return list(method["config"].items()) + ([("embedding_bank", {})] if mode == "bank" else [])
    method = method_files([LOSSES[loss]])[0]
    base = list(method["config"].items())
    if mode == "mper":
        return base
    out = base + sampler_overrides(point)
    if mode == "ramp":  # random until epoch 1, the recipe's share from epoch `u` (default: the last, 10)
        end = int(point.get("u", 10))
        out.append(("controllers", {"share": {"LinearSchedule": {
            "module": "sampler", "attribute": "random_share", "start": 1.0, "end": float(point.get("r", 0.5)),
            "start_epoch": 1, "end_epoch": end}}}))
    elif mode == "ctrl":
        meter, measure = metered_miner(loss, method["config"])
        out += meter + [("controllers", {"share": {"AdaptiveController": {
            "module": "sampler", "attribute": "random_share", "measure": f"mining_funcs.tuple_miner.{measure}",
            "target": float(point["t"]), "start_epoch": 2, "bounds": [0.01, 1.0]}}})]
        # the controller starts from all-random batches and makes them harder while the error allows
        out.append(("sampler~APPLY~2", {"random_share": 1.0}))
    elif mode == "hn":  # instance-level: random positive pairs and their nearest negatives in the bank
        out = base + [("sampler~OVERRIDE~", {"HardNeighborSampler": {"pairs_per_batch": int(point["p"])}}),
                      ("embedding_bank", {})]
    elif mode != "hard":
        raise SystemExit(f"unknown recipe mode {mode!r} in {name!r}")
    return out


def extras(summary: dict, folder: pathlib.Path) -> dict:
    """The sampler's last near share, the final random share, and the bank's staleness."""
    out = {}
    for info in summary.get("schemes", {}).values():
        history = info.get("sampler_history") or []
        if history and "near_share_in_epoch" in history[-1]:
            out["near share (last epoch)"] = round(history[-1]["near_share_in_epoch"], 3)
            out["random share (last epoch)"] = round(history[-1].get("random_share", float("nan")), 3)
    for db in folder.glob("*/saved_csvs/logs.db"):
        try:
            with sqlite3.connect(db) as conn:
                rows = conn.execute("SELECT staleness_mean_distance, staleness_recall FROM embedding_bank").fetchall()
        except sqlite3.Error:
            continue
        rows = [r for r in rows if r[0] is not None]
        if rows:
            out["staleness distance (mean)"] = round(statistics.mean(r[0] for r in rows), 4)
            out["staleness recall (mean)"] = round(statistics.mean(r[1] for r in rows), 4)
    return out


def train(recipes: list[str], folder: pathlib.Path, trunk: str, seeds: list[int], stage: str,
          num_threads: int | None) -> None:
    for seed in seeds:
        for name in recipes:
            overrides = recipe_overrides(name)
            if stage == "grid":
                overrides = overrides + [("splits_to_eval", ["val"])]
            run = {"stage": stage, "trunk": trunk, "seed": seed, "recipe": name}
            relative = pathlib.Path(stage, trunk, f"seed{seed}", name.replace("/", "_"))
            record_run(RUNS, run, folder, relative, overrides, num_threads, extras)


def grid_recipes(losses: list[str]) -> list[str]:
    return [f"{loss}/mper" for loss in losses] + [hard_name(loss, "hard", p) for loss in losses for p in HARD_GRID]


def load(path: pathlib.Path) -> list[dict]:
    return json.loads(path.read_text()) if path.is_file() else []


# ---- overhead: whole runs, timed, on an idle machine -------------------------------------------

def timed_run(overrides: list, epochs: int, num_threads: int | None) -> float:
    """Seconds of one fresh run of ``epochs`` epochs (val evaluated once, at the end)."""
    from pml_ext.runner.run.experiment_runner import ExperimentRunner
    from bench_tuning import config_names

    threads = [("num_threads", num_threads)] if num_threads else []
    folder = pathlib.Path(tempfile.mkdtemp(prefix="bench_global_"))
    try:
        start = time.perf_counter()
        ExperimentRunner("timed", root_experiment_folder=str(folder), config_names=config_names(MAIN_TRUNK),
                         overrides=overrides + [("num_epochs_train", epochs), ("save_interval", epochs),
                                                ("splits_to_eval", ["val"]), ("check_untrained_accuracy", False)]
                         + threads).run()
        return time.perf_counter() - start
    finally:
        shutil.rmtree(folder)  # the temporary folder this function just created


def overhead(reference: str, recipes: list[str], repeats: int, epochs: tuple[int, int],
             num_threads: int | None) -> None:
    """Alternate the reference (``short`` and ``long`` epochs) and each recipe (``long`` epochs)
    ``repeats`` times; append the medians to ``results/global_overhead.json``."""
    short, long = epochs
    plan = [(reference, short), (reference, long)] + [(r, long) for r in recipes]
    times: dict[tuple[str, int], list[float]] = {p: [] for p in plan}
    for _ in range(repeats):
        for name, count in plan:
            times[(name, count)].append(timed_run(recipe_overrides(name), count, num_threads))
            print(name, count, f"{times[(name, count)][-1]:.1f} s", flush=True)
    median = {p: statistics.median(v) for p, v in times.items()}
    epoch = (median[(reference, long)] - median[(reference, short)]) / (long - short)
    rows = load(TIMES)
    for name in recipes:
        extra = (median[(name, long)] - median[(reference, long)]) / long
        rows.append({"reference": reference, "recipe": name, "repeats": repeats, "epochs": [short, long],
                     "threads": num_threads or 2, "reference epoch (s)": round(epoch, 3),
                     "overhead per epoch (s)": round(extra, 3), "overhead share": round(extra / epoch, 3),
                     "runs (s)": {f"{n} x{e}": [round(t, 2) for t in v] for (n, e), v in times.items()},
                     "date": time.strftime("%Y-%m-%d")})
    _write_atomically(TIMES, json.dumps(rows, indent=1))


# ---- report -------------------------------------------------------------------------------------

def grid_table() -> str:
    runs = [r for r in load(RUNS) if r["stage"] == "grid"]
    lines = ["| recipe | val MAP@R | val P@1 | near share (last epoch) | staleness recall | wall time (s) |",
             "|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r["recipe"].split("/")[0], -(r["val MAP@R"] or 0))):
        lines.append(f"| {r['recipe']} | {r['val MAP@R']:.4f} | {r['val P@1']:.4f} | "
                     f"{r.get('near share (last epoch)', '-')} | {r.get('staleness recall (mean)', '-')} | "
                     f"{r['wall time (s)']} |")
    return "\n".join(lines)


def reference_runs(trunk: str) -> list[dict]:
    """The tuned files' own runs (bench_tuning's final stage) as ``<loss>/mper`` rows."""
    from bench_tuning import load_runs

    keys = {v: k for k, v in LOSSES.items()}
    return [{**r, "recipe": f"{keys[r['key']]}/mper", "from": "bench_tuning"} for r in load_runs()
            if r["trunk"] == trunk and r["key"] in keys] + [
        {**r, "recipe": f"{r['key']}/fresh", "from": "bench_tuning"} for r in load_runs()
        if r["trunk"] == trunk and r["key"] in BANK_METHODS]


def final_table(trunk: str) -> str:
    runs = [r for r in load(RUNS) if r["stage"] == "final" and r["trunk"] == trunk] + reference_runs(trunk)
    lines = ["| recipe | seeds | test MAP@R | test P@1 | val MAP@R | near share | staleness recall | wall time (s) |",
             "|---|---|---|---|---|---|---|---|"]
    names = sorted({r["recipe"] for r in runs}, key=lambda n: -statistics.mean(
        r["MAP@R"] for r in runs if r["recipe"] == n))
    for name in names:
        rows = [r for r in runs if r["recipe"] == name]
        cells = [_mean_sd([r.get(m) for r in rows]) for m in ("MAP@R", "P@1", "val MAP@R")]
        near = [r.get("near share (last epoch)") for r in rows]
        recall = [r.get("staleness recall (mean)") for r in rows]
        lines.append(f"| {name} | {len(rows)} | " + " | ".join(cells) + f" | {_mean_sd(near, 2)} | "
                     f"{_mean_sd(recall, 2)} | {_mean_sd([r['wall time (s)'] for r in rows], 1)} |")
    return "\n".join(lines)


def overhead_table() -> str:
    lines = ["| recipe | reference | epochs timed | reference epoch (s) | overhead per epoch (s) | overhead share "
             "| repeats | date |", "|---|---|---|---|---|---|---|---|"]
    for r in load(TIMES):
        lines.append(f"| {r['recipe']} | {r['reference']} | {r.get('epochs', [2, 4])} | {r['reference epoch (s)']} | "
                     f"{r['overhead per epoch (s)']} | {100 * r['overhead share']:.1f} % | {r['repeats']} | {r['date']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stage", choices=["grid", "final", "overhead", "report"], required=True)
    parser.add_argument("--losses", nargs="*", default=["ms", "iso", "con", "semi"], help="grid: the tuned losses")
    parser.add_argument("--recipes", nargs="*", default=[], help="final / overhead: recipe names (see the doc)")
    parser.add_argument("--reference", default="ms/mper", help="overhead: the recipe timed as the reference")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, nargs=2, default=[2, 4], help="overhead: the reference's two lengths")
    parser.add_argument("--folder", default="global", help="where the runs are written")
    parser.add_argument("--trunk", default=MAIN_TRUNK)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--num_threads", type=int, default=None, help="torch threads per process (default: 2)")
    args = parser.parse_args()
    for name in args.recipes:
        recipe_overrides(name)  # an unknown recipe fails here, before anything is written
    folder = pathlib.Path(args.folder).resolve()
    if args.stage == "grid":
        recipes = args.recipes or grid_recipes(args.losses)
        train(recipes, folder, MAIN_TRUNK, [0], "grid", args.num_threads)
    elif args.stage == "final":
        train(args.recipes, folder, args.trunk, args.seeds, "final", args.num_threads)
    elif args.stage == "overhead":
        overhead(args.reference, args.recipes, args.repeats, tuple(args.epochs), args.num_threads)
    else:
        trunks = sorted({r["trunk"] for r in load(RUNS) if r["stage"] == "final"})
        print("Grid (main trunk, seed 0, val):\n" + grid_table())
        print("\n\n".join(f"{t}:\n{final_table(t)}" for t in trunks))
        print("\nOverhead:\n" + overhead_table())


if __name__ == "__main__":
    main()
