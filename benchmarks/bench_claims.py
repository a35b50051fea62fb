"""The three papers' headline claims, measured on the glyph benchmark (see docs/glyphs.md).

Every table trains on glyphs with the main job's bundled configs (GlyphCNN + 64-d embedder,
Adam 1e-3, batch 64, MPerClassSampler m=8, the same epochs within a table; 1 thread, so that
tables can run side by side) and
reports mean ± sd over the seeds of the final test P@1, R@4, MAP@R, NMI and the wall time.
Methods are main-job method files: the bundled ones plus the ones defined below.

- ``--table lifted`` (Song et al. 2016): lifted structured loss on all pairs and on
  HardNeighborSampler batches against PML's ContrastiveLoss (all pairs of the batch) and
  TripletMarginLoss with all triplets of the random batch and with semi-hard triplets.
- ``--table smart`` (Harwood et al. 2017): random triplets + global loss, smart mining +
  global loss at fixed kappa, and with the adaptive controller; the epochs each needs to
  reach the random baseline's final test MAP@R, and the mined share and kappa per epoch.
- ``--table collapse`` (Xu et al. 2022): embedding dimension x batch size for BatchHardMiner,
  PML's semi-hard miner and IsometricHardMiner; mean test distance (L2-normalised
  embeddings), collapsed or not, P@1 and MAP@R.

    python benchmarks/bench_claims.py --table lifted --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import shutil
import statistics
import sys
import tempfile

import yaml

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_glyphs import run_seeds, summarize  # noqa: E402

BUNDLED = HERE.parent / "pml_ext" / "configs" / "comparison"
TRIPLET = {"loss_funcs~OVERRIDE~": {"metric_loss": {"TripletMarginLoss": {"margin": 0.2}}}}
EXTRA_METHODS = {
    "contrastive_all_pairs": {"name": "PML ContrastiveLoss (all pairs)", "order": 12, "config": {
        "loss_funcs~OVERRIDE~": {"metric_loss": {"ContrastiveLoss": {"pos_margin": 0, "neg_margin": 1}}},
        "mining_funcs~OVERRIDE~": {}}},
    "lifted_paper_recipe": {"name": "pml_ext LiftedStructureLoss, the paper's recipe (raw embeddings, margin 1)",
                            "order": 21, "config": {
        "loss_funcs~OVERRIDE~": {"metric_loss": {"LiftedStructureLoss": {
            "neg_margin": 1, "pos_margin": 0, "distance": {"LpDistance": {"normalize_embeddings": False}}}}},
        "mining_funcs~OVERRIDE~": {}}},
    "triplet_all": {"name": "PML TripletMarginLoss (all triplets of the batch)", "order": 11, "config": {
        **TRIPLET, "mining_funcs~OVERRIDE~": {}}},
    "smart_random": {"name": "random triplets + global loss", "order": 31, "config": {
        "smart_base": True, "sampler~OVERRIDE~": {"SmartBatchSampler": {"mined_fraction": 0.0}}}},
    "smart_fixed_kappa": {"name": "smart mining + global loss, kappa 1 fixed", "order": 32, "config": {
        "smart_base": True}},
    "smart_kappa4_half": {"name": "smart mining + global loss, kappa 4 fixed, half the triplets mined", "order": 33,
                          "config": {"smart_base": True,
                                     "mining_funcs~OVERRIDE~": {"tuple_miner": {"SmartMiner": {
                                         "kappa": 4.0, "margin": 0.2, "k": 32, "batch_layout": True}}},
                                     "sampler~OVERRIDE~": {"SmartBatchSampler": {"mined_fraction": 0.5,
                                                                                 "warmup_epochs": 2}}}},
}
TABLES = {
    "lifted": ["pml_triplet_semihard", "triplet_all", "contrastive_all_pairs", "lifted_structure",
               "lifted_hard_neighbors"],
    "smart": ["smart_random", "smart_fixed_kappa", "smart_mining"],
}
COLLAPSE_MINERS = {"BatchHardMiner": {"BatchHardMiner": {}},
                   "semi-hard": {"TripletMarginMiner": {"margin": 0.2, "type_of_triplets": "semihard"}},
                   "IsometricHardMiner": {"IsometricHardMiner": {"margin": 0.2}}}
COLLAPSED_BELOW = 0.05  # mean test distance on the unit sphere; healthy embeddings sit near 1.0-1.4


def methods_folder(keys: list[str]) -> str:
    """A temporary folder with the bundled method files and the extra ones this table needs."""
    folder = tempfile.mkdtemp(prefix="claims_methods_")
    smart = yaml.safe_load((BUNDLED / "smart_mining.yaml").read_text())
    for key in keys:
        if (BUNDLED / f"{key}.yaml").is_file():
            shutil.copy(BUNDLED / f"{key}.yaml", folder)
            continue
        spec = {k: v for k, v in EXTRA_METHODS[key].items()}
        config = dict(spec["config"])
        if config.pop("smart_base", False):  # the bundled smart-mining method without its controller
            config = {**{k: v for k, v in smart["config"].items() if k != "controllers"}, **config}
        spec.update(config=config, requires=smart["requires"] if key.startswith("smart") else [])
        (pathlib.Path(folder) / f"{key}.yaml").write_text(yaml.safe_dump(spec))
    return folder


def epochs_to_reach(histories: dict, target: float) -> dict[str, int | None]:
    """The first epoch at which each method's test MAP@R reaches ``target`` (``None``: never)."""
    return {name: next((r["epoch"] for r in h["metrics"] if (r.get("MAP@R") or 0) >= target), None)
            for name, h in histories.items()}


def smart_extras(by_seed: dict) -> list[str]:
    lines = ["", "Epochs to reach the random baseline's final test MAP@R (per seed), and per epoch the "
                 "share of really mined triplets and kappa (seed of the first run):", ""]
    for seed, (rows, _, histories) in by_seed.items():
        target = next((r["MAP@R"] for r in rows if r["method"].startswith("random triplets")), None)
        if target is None:  # the random baseline was not among --methods
            continue
        reach = epochs_to_reach(histories, target)
        lines.append(f"- seed {seed}: target MAP@R {target:.4f}; " +
                     "; ".join(f"{name}: {'never' if e is None else f'epoch {e}'}" for name, e in reach.items()))
    _, _, histories = next(iter(by_seed.values()))
    for name, h in histories.items():
        shares = ", ".join(f"{s['mined_share_in_epoch']:.2f}" for s in h["sampler_history"])
        kappas = ", ".join(f"{v:.2f}" for s in h["settings_history"] for k, v in s.items() if k != "epoch")
        lines.append(f"- {name}: mined share per epoch [{shares}]" + (f"; kappa per epoch [{kappas}]" if kappas else ""))
    return lines


def collapse_table(seeds, epochs: int, dims, batch_sizes) -> list[str]:
    lines = ["| dim | batch | miner | mean test distance | collapsed | P@1 | MAP@R |", "|---|---|---|---|---|---|---|"]
    for dim in dims:
        for batch in batch_sizes:
            for label, miner in COLLAPSE_MINERS.items():
                folder = tempfile.mkdtemp(prefix="claims_collapse_")
                (pathlib.Path(folder) / "m.yaml").write_text(yaml.safe_dump({"name": label, "config": {
                    **TRIPLET, "mining_funcs~OVERRIDE~": {"tuple_miner": miner},
                    "models": {"embedder~OVERRIDE~": {"MLP": {"layer_sizes": [dim]}}},
                    # the same images per epoch in every cell: 8,192 (the main job's 128 batches of 64)
                    "trainer~APPLY~2": {"batch_size": batch, "iterations_per_epoch": max(1, 8192 // batch)},
                    "tester": {"GlobalEmbeddingSpaceTester": {"accuracy_calculator~OVERRIDE~": {"AccuracyCalculator": {
                        "include": ["precision_at_1", "mean_average_precision_at_r", "embedding_spread"],
                        "k": "max_bin_count"}}}}}}))
                runs = run_seeds(seeds, methods_folder=folder,
                                 overrides=[("num_epochs_train", epochs), ("save_interval", epochs),
                                            ("check_untrained_accuracy", False), ("num_threads", 1)])
                shutil.rmtree(folder, ignore_errors=True)
                picked = [histories[label]["metrics"][-1] for _, _, histories in runs.values()]
                spread = [p["embedding_spread"] for p in picked]
                collapsed = sum(s < COLLAPSED_BELOW for s in spread)
                lines.append(f"| {dim} | {batch} | {label} | {_fmt(spread)} | {collapsed}/{len(spread)} | "
                             f"{_fmt([p['P@1'] for p in picked])} | {_fmt([p['MAP@R'] for p in picked])} |")
                print(lines[-1], flush=True)
    return lines


def _fmt(values) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", choices=("lifted", "smart", "collapse"), required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="default: the main job's (collapse: 2)")
    parser.add_argument("--methods", nargs="+", default=None, help="only these method keys of the table")
    parser.add_argument("--save_interval", type=int, default=None,
                        help="evaluate every N epochs (default: the main job's; smart: 2, for epochs-to-reach)")
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 8, 32])
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[32, 256, 1024])
    args = parser.parse_args()
    load = os.getloadavg()[0]
    command = "python benchmarks/bench_claims.py " + " ".join(sys.argv[1:])
    lines = [f"## Claim: {args.table}", "", f"Command: `{command}`; date {datetime.date.today()}; "
             f"1-min load average at start {load:.1f}.", ""]
    if args.table == "collapse":
        lines += collapse_table(args.seeds, args.epochs or 2, args.dims, args.batch_sizes)
    else:
        epochs = args.epochs
        interval = args.save_interval or (2 if args.table == "smart" else None)
        folder = methods_folder(args.methods or TABLES[args.table])
        # 1 thread: the tables run side by side, and 2 OpenMP threads beside a busy process crawl
        overrides = [("num_threads", 1)] + ([("num_epochs_train", epochs)] if epochs else []) + \
            ([("save_interval", interval)] if interval else [])
        by_seed = run_seeds(args.seeds, methods_folder=folder, overrides=overrides)
        shutil.rmtree(folder, ignore_errors=True)
        lines += summarize(by_seed)
        if args.table == "smart":
            lines += smart_extras(by_seed)
    text = "\n".join(lines) + "\n"
    print(text)
    (HERE / "results" / f"claims_{args.table}.md").write_text(text)


if __name__ == "__main__":
    main()
