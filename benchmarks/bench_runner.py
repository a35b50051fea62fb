"""Benchmark the config runner: its overhead against the same experiment written by hand
with PML 2.x, and the main job's wall time against its 5-minute target.

Overhead (``--part overhead``): the bundled default experiment (digits 0-4 / 5-9, MLP
64-256-32, TripletMarginLoss + semi-hard TripletMarginMiner, MPerClassSampler m=8, batch
64, Adam 1e-3) for ``--epochs`` epochs, (a) through ``pml_ext.ExperimentRunner`` and (b) as
a plain script of PML's own ``MetricLossOnly``, ``GlobalEmbeddingSpaceTester``,
``HookContainer`` and record-keeper with the same settings. Both evaluate on the test split
every epoch; (a) also checks the untrained accuracy (epochs -1 and 0) and writes plots, as
it does by default. Runs alternate (a, b, a, b, ...); medians and their ratio are reported,
and the final test MAP@R of both as a sanity check.

Main job (``--part main``): ``pml-ext run``'s code path (``ComparisonRunner``), total and
per-method wall time.

Import (``--part import``): ``import pml_ext`` plus its losses, miners, samplers and
controller against ``import torch`` plus PML's losses, each in a fresh interpreter,
alternating; medians.

DDP (``--part ddp``): one glyph epoch (the main job's glyph configs, PML's baseline method,
one pass over its sampler) under ``torchrun --nproc_per_node 2`` (gloo, one thread per rank)
against one process (one thread, and two threads); wall time of the whole command.

    python benchmarks/bench_runner.py                 # overhead and main, writes results/runner.md
    python benchmarks/bench_runner.py --part overhead --epochs 3 --repeats 3
    python benchmarks/bench_runner.py --part import   # writes results/runner_import.md
    python benchmarks/bench_runner.py --part ddp       # writes results/runner_ddp.md
"""
from __future__ import annotations

import argparse
import datetime
import logging
import os
import pathlib
import statistics
import sys
import tempfile
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "runner.md"


def run_with_runner(folder: str, epochs: int) -> float:
    from pml_ext.runner import ExperimentRunner

    summary = ExperimentRunner("runner", root_experiment_folder=folder,
                               overrides=[("num_epochs_train", epochs)]).run()
    return summary["rows"][-1]["MAP@R"]


def run_by_hand(folder: str, epochs: int) -> float:
    """The same experiment as the bundled defaults, written directly against PML 2.x."""
    import faiss

    # The bundled config runs with one torch and one FAISS thread; so does this script.
    threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    try:
        return _train_by_hand(folder, epochs)
    finally:
        torch.set_num_threads(threads[0])
        faiss.omp_set_num_threads(threads[1])


def _train_by_hand(folder: str, epochs: int) -> float:
    import numpy as np
    import record_keeper as rk
    from pytorch_metric_learning import losses, miners, samplers, testers, trainers
    from pytorch_metric_learning.utils import common_functions as c_f
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.logging_presets import HookContainer

    import pml_ext

    torch.manual_seed(0)
    np.random.seed(0)
    train, test = pml_ext.digits_split()
    models = {"trunk": pml_ext.MLP([64, 256], final_relu=True), "embedder": pml_ext.MLP([256, 32])}
    optimizers = {f"{k}_optimizer": torch.optim.Adam(m.parameters(), lr=1e-3) for k, m in models.items()}
    writer = rk.RecordWriter(folder=os.path.join(folder, "saved_csvs"))
    keeper = rk.RecordKeeper(record_writer=writer, attributes_to_search_for=c_f.list_of_recordable_attributes_list_names())
    hooks = HookContainer(keeper, primary_metric="mean_average_precision_at_r", validation_split_name="test", log_freq=1)
    calculator = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r", "NMI"), k="max_bin_count")
    tester = testers.GlobalEmbeddingSpaceTester(batch_size=256, dataloader_num_workers=0, accuracy_calculator=calculator,
                                                end_of_testing_hook=hooks.end_of_testing_hook)
    splits = [("test", ["test"])]
    end_of_epoch = hooks.end_of_epoch_hook(tester, {"test": test}, os.path.join(folder, "saved_models"),
                                           test_interval=1, patience=None, splits_to_eval=splits)
    trainer = trainers.MetricLossOnly(
        models, optimizers, 64, {"metric_loss": losses.TripletMarginLoss(margin=0.2)}, train,
        mining_funcs={"tuple_miner": miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard")},
        sampler=samplers.MPerClassSampler(train.labels, m=8, length_before_new_iter=len(train)),
        dataloader_num_workers=0, freeze_trunk_batchnorm=True, set_min_label_to_zero=True,
        dataset_labels=train.labels.numpy(),
        end_of_iteration_hook=hooks.end_of_iteration_hook, end_of_epoch_hook=end_of_epoch)
    trainer.train(num_epochs=epochs)
    history = hooks.get_accuracy_history(tester, "test", metrics=["mean_average_precision_at_r"])
    return history[[k for k in history if k != "epoch"][0]][-1]


def part_overhead(epochs: int, repeats: int) -> list[str]:
    times = {"runner": [], "hand": []}
    maps = {}
    for fn in (run_with_runner, run_by_hand):  # untimed warm-up: one-time imports (torch._dynamo, matplotlib)
        with tempfile.TemporaryDirectory() as folder:
            fn(folder, 1)
    for _ in range(repeats):
        for name, fn in (("runner", run_with_runner), ("hand", run_by_hand)):
            with tempfile.TemporaryDirectory() as folder:
                start = time.perf_counter()
                maps[name] = fn(folder, epochs)
                times[name].append(time.perf_counter() - start)
    runner, hand = statistics.median(times["runner"]), statistics.median(times["hand"])
    return [
        "## Overhead against the same experiment written by hand with PML 2.x",
        "",
        f"{epochs} epochs, {repeats} alternating runs each after an untimed warm-up run of each; "
        "median wall time.",
        "",
        "| | wall time (s) | all runs (s) | final test MAP@R |",
        "|---|---|---|---|",
        f"| `ExperimentRunner` (bundled defaults) | {runner:.1f} | {', '.join(f'{t:.1f}' for t in times['runner'])} "
        f"| {maps['runner']:.4f} |",
        f"| PML trainer + tester + HookContainer by hand | {hand:.1f} | "
        f"{', '.join(f'{t:.1f}' for t in times['hand'])} | {maps['hand']:.4f} |",
        f"| **ratio runner / by hand** | **{runner / hand:.2f}** | | |",
        "",
        "The runner's extra work: reading and saving the configs, the untrained-accuracy check "
        "(two more evaluations, PB's default), the per-epoch reseed, and the table and plots at the end. "
        "The MAP@R values differ only through the random streams (the runner reseeds every epoch; "
        "the hand-written script seeds once).",
        "",
    ]


def part_main() -> list[str]:
    from pml_ext.runner import ComparisonRunner

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        result = ComparisonRunner(root_experiment_folder=folder).run()
        total = time.perf_counter() - start
    lines = ["## The main job (`pml-ext run`)", "", f"Total wall time: **{total:.0f} s** (target: < 300 s on 2 cores).",
             "", "| method | P@1 | MAP@R | NMI | epochs | wall time (s) |", "|---|---|---|---|---|---|"]
    for row in result["rows"]:
        cells = [row["method"]] + [f"{row[c]:.4f}" if isinstance(row[c], float) else str(row[c])
                                   for c in ("P@1", "MAP@R", "NMI")] + [str(row["epochs"]), "-" if row["wall time (s)"] is None else f"{row['wall time (s)']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + [f"Skipped: {s}" for s in result["skipped"]] + [""]
    return lines


IMPORTS = {
    "torch + PML losses": "import torch; import pytorch_metric_learning.losses",
    "pml_ext": "import pml_ext",
    "pml_ext losses": "import pml_ext; from pml_ext import LiftedStructureLoss, RatioTripletLoss, GlobalLoss",
    "pml_ext classes": "import pml_ext; from pml_ext import LiftedStructureLoss, RatioTripletLoss, GlobalLoss, "
                       "SmartMiner, IsometricHardMiner, SmartBatchSampler, HardNeighborSampler, AdaptiveController",
}
PEER = "torch + PML losses"


def part_import(repeats: int) -> list[str]:
    import subprocess

    times: dict[str, list[float]] = {k: [] for k in IMPORTS}
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for _ in range(repeats):
        for name, statement in IMPORTS.items():
            code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
            out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            times[name].append(float(out.stdout.strip().splitlines()[-1]))
    peer = statistics.median(times[PEER])
    rows = [f"| `{IMPORTS[k]}` | {statistics.median(v):.2f} | {', '.join(f'{t:.2f}' for t in v)} | "
            f"{statistics.median(v) / peer:.2f} |" for k, v in times.items()]
    return ["## `import pml_ext`", "", f"{repeats} alternating fresh interpreters each; median seconds.", "",
            f"| statement | median (s) | all (s) | ratio to {PEER} |", "|---|---|---|---|", *rows, "",
            "`import pml_ext` alone loads nothing (names are imported on first use); scikit-learn, FAISS, "
            "YAML and the runner load only with the classes that need them.", ""]


def part_ddp(repeats: int) -> list[str]:
    import subprocess

    args = ["run", "--config_dataset", "glyphs", "--config_models", "glyph_cnn", "--config_general", "default",
            "glyphs", "--num_epochs_train", "1", "--save_interval", "2", "--check_untrained_accuracy", "false",
            "--trainer~APPLY~2", "{iterations_per_epoch: null}", "--log_data_to_tensorboard", "false"]
    commands = {
        "1 process, 1 thread": ([sys.executable, "-m", "pml_ext"], ["--num_threads", "1"]),
        "1 process, 2 threads": ([sys.executable, "-m", "pml_ext"], ["--num_threads", "2"]),
        "DDP world 2 (gloo), 1 thread per rank": ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                   "--nproc_per_node", "2", "-m", "pml_ext"], ["--num_threads", "1"]),
    }
    times: dict[str, list[float]] = {k: [] for k in commands}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    with tempfile.TemporaryDirectory() as folder:
        for i in range(repeats + 1):  # the first round is a warm-up (glyph rendering cache)
            for j, (name, (prefix, extra)) in enumerate(commands.items()):
                cmd = prefix + args + extra + ["--root_experiment_folder", folder, "--experiment_name", f"round{i}_{j}"]
                start = time.perf_counter()
                done = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if done.returncode:
                    raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
                if i:
                    times[name].append(time.perf_counter() - start)
    base = statistics.median(times["1 process, 1 thread"])
    rows = [f"| {k} | {statistics.median(v):.1f} | {', '.join(f'{t:.1f}' for t in v)} | {statistics.median(v) / base:.2f} |"
            for k, v in times.items()]
    return ["## DDP world 2 against one process: one glyph epoch", "",
            "The main job's glyph configs, PML's baseline method (MPerClassSampler), one pass over the sampler "
            "(134 batches of 64 in one process; 67 per rank under DDP, the same data), no evaluation; wall time "
            f"of the whole command (start-up, glyph loading, model building included); {repeats} rounds after "
            "a warm-up round, median.", "",
            "| command | median (s) | all (s) | ratio to 1 process, 1 thread |", "|---|---|---|---|", *rows, "",
            "Under DDP each rank holds a copy of the data and model and the ranks exchange gradients every step "
            "(gloo, through the loopback). On 2 cores shared with other jobs (the load average above), two ranks "
            "compete with those jobs for the same cores, so the ratio here is no forecast for idle cores or "
            "several machines.", ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["overhead", "main", "all", "import", "ddp"], default="all")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    logging.disable(logging.INFO)
    load = os.getloadavg()[0]
    lines = ["# Config runner benchmarks", "",
             f"Command: `python {' '.join(['benchmarks/bench_runner.py'] + sys.argv[1:])}`; date "
             f"{datetime.date.today().isoformat()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
             f"1-min load average at start {load:.1f}. Other jobs share the 2 cores, so absolute times are "
             f"noisy: the ratio, measured in the same run, is the figure to compare.", ""]
    if args.part in ("overhead", "all"):
        lines += part_overhead(args.epochs, args.repeats)
    if args.part in ("main", "all"):
        lines += part_main()
    results = RESULTS
    if args.part in ("import", "ddp"):
        lines[0] = f"# Config runner: {'import time' if args.part == 'import' else 'DDP'}"
        lines += part_import(max(args.repeats, 5)) if args.part == "import" else part_ddp(args.repeats)
        results = RESULTS.with_name(f"runner_{args.part}.md")
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
