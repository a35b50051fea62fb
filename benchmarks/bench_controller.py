"""Benchmark AdaptiveController: smart mining + global loss with and without the controller on digits.

An MLP trained on digits 0-4 and tested on 5-9 (``pml_ext.digits_split``), the same
epochs, batch size, optimiser, initialisation and seeds for every method:

* ``random``: random triplets (``SmartBatchSampler(mined_fraction=0)``), the baseline;
* ``fixed``: smart mining (``SmartMiner`` over the whole training set, ``SmartBatchSampler``,
  100 % mined triplets after the 2 random warm-up epochs) at a constant kappa;
* ``controlled``: the same, with ``AdaptiveController(miner, "kappa", target=0.5)``
  (the paper's least-squares rule, window 5, start epoch 3, bounds [1, 1000]).

All use ``RatioTripletLoss(0.2) + GlobalLoss(lambda_=1, t=0.01)`` (the paper's losses).
After every epoch: MAP@R on the test classes 5-9 and on the training classes 0-4 (PML's
``AccuracyCalculator``), kappa and the epoch's training error e (SmartMiner.fraction_active).
Reported: MAP@R per epoch, the epoch at which each method first reaches the random
baseline's final MAP@R, and the kappa trajectory; a PNG with the curves.

``--part rules`` measures the plant the controller faces (the setup of the real-use test
in tests/test_adaptive_controller.py: MLP [64, 128, 16], lr 1e-4, kappa from 32): the
epoch-to-epoch variation of e at a *fixed* kappa, and how far e stays from the target
after epoch 5 under each rule, over several seeds.

    python benchmarks/bench_controller.py                       # accuracy part -> results/controller.md + .png
    python benchmarks/bench_controller.py --part rules          # its own section of results/controller.md
    python benchmarks/bench_controller.py --seeds 0 --epochs 8  # quicker
"""
from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import statistics
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytorch_metric_learning.losses import MultipleLosses  # noqa: E402

import pml_ext  # noqa: E402
from pml_ext.hooks.adaptive_controller import AdaptiveController  # noqa: E402
from pml_ext.utils.experiment import embed_dataset, evaluate_embeddings, train_metric_model  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
BATCH, LR, LAYERS, K, TARGET = 63, 1e-4, [64, 256, 32], 256, 0.5


def map_at_r(model, dataset) -> float:
    metrics = evaluate_embeddings(embed_dataset(model, dataset.data), dataset.labels,
                                  include=("mean_average_precision_at_r",))
    return metrics["mean_average_precision_at_r"]


def run(method: str, kappa: float, seed: int, epochs: int, train, test, rule="least_squares", layers=LAYERS,
        global_loss: bool = True, evaluate: bool = True) -> dict:
    """One training run; returns per-epoch lists (index 0 = untrained model for MAP@R)."""
    torch.manual_seed(seed)
    model = pml_ext.MLP(layers)
    miner = pml_ext.SmartMiner(kappa=kappa, k=K, batch_layout=True, seed=seed, index_method="exact")
    sampler = pml_ext.SmartBatchSampler(miner, BATCH, mined_fraction=0.0 if method == "random" else 1.0,
                                        warmup_epochs=2, seed=seed, labels=train.labels)
    loss_fn = pml_ext.RatioTripletLoss(margin=0.2)
    if global_loss:
        loss_fn = MultipleLosses([loss_fn, pml_ext.GlobalLoss(lambda_=1.0, t=0.01)])
    ctrl = AdaptiveController(miner, "kappa", TARGET, rule=rule, bounds=(1.0, 1000.0)) if method == "controlled" \
        else None
    curve = {"test": [], "train": [], "kappa": [], "error": []}
    if evaluate:
        curve["test"].append(map_at_r(model, test))
        curve["train"].append(map_at_r(model, train))
    readings = []

    def on_iteration(record):
        readings.append(miner.fraction_active)
        if ctrl is not None:
            ctrl.observe()

    def on_epoch_end(epoch, record):
        curve["kappa"].append(miner.kappa)  # the kappa this epoch was mined with
        curve["error"].append(statistics.mean(readings))
        readings.clear()
        if ctrl is not None:
            ctrl.step()
        sampler.update(embed_dataset(model, train.data), train.labels)
        if evaluate:
            curve["test"].append(map_at_r(model, test))
            curve["train"].append(map_at_r(model, train))

    train_metric_model(model, train.data, train.labels, loss_fn, miner, batch_size=BATCH, epochs=epochs, lr=LR,
                       seed=seed, sampler=sampler, on_iteration=on_iteration, on_epoch_end=on_epoch_end)
    return curve


def first_epoch_reaching(values: list[float], target: float) -> int | None:
    return next((e for e, v in enumerate(values) if e > 0 and v >= target), None)


def mean_curves(curves: list[dict], key: str) -> list[float]:
    return [statistics.mean(c[key][i] for c in curves) for i in range(len(curves[0][key]))]


def plot(results: dict, epochs: int, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    for label, curves in results.items():
        for ax, key in zip(axes, ("test", "train", "kappa", "error")):
            xs = range(len(curves[0][key])) if key in ("test", "train") else range(1, epochs + 1)
            ax.plot(list(xs), mean_curves(curves, key), marker="o", ms=3, label=label)
    titles = ("MAP@R, test classes 5-9", "MAP@R, training classes 0-4", "kappa used in the epoch (log)",
              "training error e (fraction active)")
    for ax, title in zip(axes, titles):
        ax.set_title(title)
        ax.set_xlabel("epoch")
    axes[2].set_yscale("log")
    axes[3].axhline(TARGET, color="grey", ls="--", lw=1)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def accuracy_part(args, train, test) -> str:
    load = os.getloadavg()[0]
    start = time.time()
    results: dict[str, list[dict]] = {}
    methods = [("random", "random", 1.0)]
    for kappa in args.kappas:
        methods += [(f"fixed kappa={kappa:g}", "fixed", kappa), (f"controlled from kappa={kappa:g}", "controlled", kappa)]
    for label, method, kappa in methods:
        results[label] = [run(method, kappa, seed, args.epochs, train, test) for seed in args.seeds]
        print(f"{label}: done at {time.time() - start:.0f} s", flush=True)
    elapsed = time.time() - start

    base_test = mean_curves(results["random"], "test")[-1]
    base_train = mean_curves(results["random"], "train")[-1]
    lines = [
        "## Accuracy: with and without the controller", "",
        f"Command: `{command_line()}`; date {datetime.date.today()}; torch {torch.__version__}, {args.threads} "
        f"threads, seeds {args.seeds}, {args.epochs} epochs; wall time {elapsed:.0f} s; 1-min load average at start "
        f"{load:.1f} (2 cores shared with other jobs: times are noisy, the accuracies are not).", "",
        f"Setup: MLP {LAYERS}, Adam lr {LR}, batches of {BATCH // 3} triplets, SmartMiner k={K} (exact index), "
        "2 random warm-up epochs, RatioTripletLoss(0.2) + GlobalLoss(1, 0.01); controller: least squares "
        f"(default rule), target e={TARGET}, window 5, start epoch 3, bounds [1, 1000], max step x2. "
        "MAP@R is the mean over seeds; epoch 0 is the untrained model.", "",
        f"Targets: the random baseline's final MAP@R, {base_test:.4f} (test classes) and {base_train:.4f} "
        "(training classes).", "",
        "| method | final test MAP@R | epochs to random's test MAP@R | final train-class MAP@R "
        "| epochs to random's train-class MAP@R | mean abs(e - 0.5), epochs 6+ |",
        "|---|---|---|---|---|---|",
    ]
    for label, curves in results.items():
        test_curve, train_curve = mean_curves(curves, "test"), mean_curves(curves, "train")
        reach_test, reach_train = first_epoch_reaching(test_curve, base_test), first_epoch_reaching(
            train_curve, base_train)
        late = [abs(e - TARGET) for c in curves for e in c["error"][5:]] or [float("nan")]
        lines.append(f"| {label} | {test_curve[-1]:.4f} | {reach_test or 'never'} | {train_curve[-1]:.4f} | "
                     f"{reach_train or 'never'} | {statistics.mean(late):.3f} |")
    lines += ["", "MAP@R per epoch, test classes / training classes:", "",
              "| epoch | " + " | ".join(results) + " |", "|---" * (len(results) + 1) + "|"]
    for epoch in range(args.epochs + 1):
        cells = [f"{mean_curves(c, 'test')[epoch]:.4f} / {mean_curves(c, 'train')[epoch]:.4f}"
                 for c in results.values()]
        lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    lines += ["", "Kappa used in each epoch / training error e of that epoch (seed by seed):", ""]
    for label, curves in results.items():
        if label == "random":
            continue
        for seed, c in zip(args.seeds, curves):
            traj = " ".join(f"{k:.3g}/{e:.2f}" for k, e in zip(c["kappa"], c["error"]))
            lines.append(f"- {label}, seed {seed}: {traj}")
    png = RESULTS / "controller.png"
    plot(results, args.epochs, png)
    lines += ["", f"![curves]({png.name})", ""]
    return "\n".join(lines)


def rules_part(args, train, test) -> str:
    """The real-use test's plant: fixed-kappa variation, then each rule over ``args.seeds``."""
    from pml_ext.hooks.least_squares_rule import LeastSquaresRule

    load = os.getloadavg()[0]
    start = time.time()
    layers, epochs = [64, 128, 16], 12
    common = dict(layers=layers, global_loss=False, evaluate=False)
    lines = [
        "## The plant on digits, and the rules", "",
        f"Command: `{command_line()}`; date {datetime.date.today()}; seeds {args.seeds}; 1-min load average "
        f"at start {load:.1f}.", "",
        f"Setup of the real-use test: MLP {layers}, Adam lr {LR}, RatioTripletLoss(0.2) only, SmartMiner k={K}, "
        f"{epochs} epochs, 2 random warm-up epochs; e = SmartMiner.fraction_active averaged over the epoch's "
        "15 batches of 21 triplets.", "",
        "**Fixed kappa = 45** (about where the controller settles), e per epoch 3-12:", "",
    ]
    for seed in args.seeds[:2]:
        c = run("fixed", 45.0, seed, epochs, train, test, **common)
        jumps = [abs(b - a) for a, b in zip(c["error"][2:], c["error"][3:])]
        lines.append(f"- seed {seed}: " + " ".join(f"{e:.2f}" for e in c["error"][2:])
                     + f" (largest epoch-to-epoch change {max(jumps):.2f})")
    lines += ["", "**Controlled from kappa = 32**, target 0.5: mean and max of |e - 0.5| over epochs 6-12 "
              "(per seed, then the mean over seeds):", "",
              "| rule | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean |",
              "|---" * (len(args.seeds) + 2) + "|"]
    rules = {"least_squares (default: paper + r^2 gate)": lambda: "least_squares",
             "least_squares, min_r2=0 (paper only)": lambda: LeastSquaresRule(min_r2=0.0),
             "least_squares, anchored": lambda: LeastSquaresRule(anchored=True),
             "proportional (gain 1.5)": lambda: "proportional"}
    for name, make in rules.items():
        cells, mads = [], []
        for seed in args.seeds:
            c = run("controlled", 32.0, seed, epochs, train, test, rule=make(), **common)
            late = [abs(e - TARGET) for e in c["error"][5:]]
            mads.append(statistics.mean(late))
            cells.append(f"{mads[-1]:.3f} / {max(late):.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {statistics.mean(mads):.3f} |")
        print(f"{name}: done at {time.time() - start:.0f} s", flush=True)
    lines += ["", f"Wall time {time.time() - start:.0f} s.", ""]
    return "\n".join(lines)


def command_line() -> str:
    return "python benchmarks/bench_controller.py" + ("" if len(sys.argv) < 2 else " " + " ".join(sys.argv[1:]))


def replace_section(text: str, body: str) -> str:
    """Put ``body`` (which starts with a '## ' title) in place of the section of that title."""
    title = body.splitlines()[0]
    if title not in text:
        return text.rstrip("\n") + "\n\n" + body
    head, rest = text.split(title, 1)
    tail = rest.split("\n## ", 1)
    return head + body + ("\n## " + tail[1] if len(tail) > 1 else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("accuracy", "rules"), default="accuracy")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="default: 0 1 (accuracy), 0 1 2 3 (rules)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--kappas", type=float, nargs="+", default=[1.0, 32.0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.seeds is None:
        args.seeds = [0, 1] if args.part == "accuracy" else [0, 1, 2, 3]
    torch.set_num_threads(args.threads)
    train, test = pml_ext.digits_split()
    body = (accuracy_part if args.part == "accuracy" else rules_part)(args, train, test)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "controller.md"
    text = path.read_text() if path.exists() else "# AdaptiveController benchmarks (issue 5)\n"
    path.write_text(replace_section(text, body))
    print(body)


if __name__ == "__main__":
    main()
