"""Benchmark smart mining: speed at N = 100k and accuracy on scikit-learn's digits.

Speed (``--part speed``), on the clustered unit-norm embeddings of bench_index.py (d=64,
~50 points per class, so k=32 lists hold both positives and negatives):

* ``smart_triplets`` alone on the k=32 lists of the whole set (median of 3 runs, with
  the run's torch threads and with 1 thread);
* the whole per-epoch mining, ``SmartMiner.update`` (index build + ``knn_all`` +
  Algorithm 1 + the epoch's ``fraction_active``), one run;
* exact global hard mining: every anchor's hardest positive and hardest negative over
  all N (the full N x N distances in row chunks), the exhaustive alternative; its cost
  is linear in the anchors, so ``--exact-rows`` anchors are timed and scaled to N;
* at N = 10k also PML's ``BatchHardMiner`` over the whole set (one N x N matrix; it
  cannot run at 100k: 40 GB), measured in the same run.

Accuracy (``--part accuracy``): an MLP trained on digits 0-4 and tested on 5-9, the same
epochs, batch size, optimiser and seeds for every method; P@1 and MAP@R on the test
classes after every epoch (PML's ``AccuracyCalculator``).

    python benchmarks/bench_smart.py                  # both parts, writes results/smart.md
    python benchmarks/bench_smart.py --part accuracy  # one part (its section is replaced)
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
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_index import clustered_embeddings  # noqa: E402  (same data as the index benchmark)
from pytorch_metric_learning.losses import MultipleLosses, TripletMarginLoss  # noqa: E402
from pytorch_metric_learning.miners import BatchHardMiner, TripletMarginMiner  # noqa: E402

import pml_ext  # noqa: E402
from pml_ext import (MLP, GlobalLoss, RatioTripletLoss, SmartBatchSampler, SmartMiner,  # noqa: E402
                     digits_split, smart_triplets)
from pml_ext.miners import smart_miner as smart_miner_module  # noqa: E402
from pml_ext.utils.experiment import embed_dataset, evaluate_embeddings, train_metric_model  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "smart.md"
K = 32


# ---------------------------------------------------------------------- speed
def exact_global_hard_mining(x: torch.Tensor, labels: torch.Tensor, num_anchors: int | None = None,
                             chunk: int = 1024):
    """Hardest positive and negative over all N of the first ``num_anchors`` anchors (default all).

    Returns ``(a, p, n)`` LongTensors. The cost is linear in the number of anchors (each
    scans all N), so a prefix of anchors measures the whole by scaling.
    """
    hardest_pos, hardest_neg = [], []
    for start in range(0, num_anchors or x.shape[0], chunk):
        sq = (2 - 2 * x[start:start + chunk] @ x.T).clamp_min_(0)  # unit vectors
        same = labels[start:start + chunk].unsqueeze(1) == labels.unsqueeze(0)
        rows = torch.arange(sq.shape[0])
        same[rows, rows + start] = False
        hardest_pos.append(sq.masked_fill(~same, -1.0).argmax(dim=1))
        same[rows, rows + start] = True
        hardest_neg.append(sq.masked_fill_(same, float("inf")).argmin(dim=1))
    positives = torch.cat(hardest_pos)
    return torch.arange(positives.shape[0]), positives, torch.cat(hardest_neg)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def cpu_timed(fn, *args, **kwargs):
    """``(out, wall seconds, CPU seconds of this process, all threads)``."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def capture_algorithm1():
    """Record the lists, kappa and time of the ``smart_triplets`` call inside ``SmartMiner.update``."""
    seen = {}

    def wrapper(nbr, dist, labels, kappa, generator=None, **kwargs):
        out, seconds, cpu = cpu_timed(smart_triplets, nbr, dist, labels, kappa, generator, **kwargs)
        seen.update(lists=(nbr, dist, labels, kappa), seconds=seconds, cpu=cpu)
        return out

    smart_miner_module.smart_triplets = wrapper
    return seen


def speed_part(num_points: int, small: int, exact_rows: int) -> str:
    seen = capture_algorithm1()
    rows = []
    for n in (small, num_points):
        x, labels = clustered_embeddings(n, 64)
        miner = SmartMiner(kappa=1.0, k=K, seed=0)
        _, whole, whole_cpu = cpu_timed(miner.update, x, labels)
        nbr, dist, lab, kappa = seen["lists"]
        alg1 = [(seen["seconds"], seen["cpu"])]
        alg1 += [cpu_timed(smart_triplets, nbr, dist, lab, kappa, torch.Generator().manual_seed(0))[1:]
                 for _ in range(2)]
        alg1_wall, alg1_cpu = sorted(alg1)[1]
        # Small element-wise kernels contend badly for two OpenMP threads on a shared machine.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        alg1_one = sorted(timed(smart_triplets, nbr, dist, lab, kappa, torch.Generator().manual_seed(0))[1]
                          for _ in range(3))[1]
        torch.set_num_threads(threads)
        anchors = min(n, exact_rows)
        _, exact = timed(exact_global_hard_mining, x, labels, anchors)
        exact *= n / anchors
        pml = timed(BatchHardMiner(), x, labels)[1] if n == small else None
        rows.append({"n": n, "alg1": alg1_wall, "alg1_cpu": alg1_cpu, "alg1_one": alg1_one, "whole": whole, "whole_cpu": whole_cpu,
                     "index": whole - alg1[0][0], "exact": exact, "exact_rows": anchors, "pml": pml,
                     "mined": miner.num_mined, "random": miner.num_random, "e": miner.epoch_fraction_active})
        print(rows[-1], flush=True)
    lines = ["| N | smart_triplets s (CPU s) | smart_triplets s, 1 thread | per-epoch mining s (CPU s) | of which index s "
             "| exact global hard mining s | PML BatchHardMiner s | exact / smart | PML / smart "
             "| mined | random | epoch e |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pml = f"{r['pml']:.2f}" if r["pml"] is not None else "n/a (N x N = 40 GB)"
        pml_ratio = f"{r['pml'] / r['whole']:.2f}" if r["pml"] is not None else "n/a"
        scaled = "" if r["exact_rows"] == r["n"] else f" ({r['exact_rows']:,} anchors timed, x {r['n'] / r['exact_rows']:.1f})"
        lines.append(f"| {r['n']:,} | {r['alg1']:.2f} ({r['alg1_cpu']:.2f}) | {r['alg1_one']:.2f} | {r['whole']:.2f} ({r['whole_cpu']:.2f}) | "
                     f"{r['index']:.2f} | {r['exact']:.2f}{scaled} | {pml} | {r['exact'] / r['whole']:.2f} | "
                     f"{pml_ratio} | {r['mined']:,.0f} | {r['random']:,.0f} | {r['e']:.3f} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------- accuracy
EPOCHS, BATCH, LR, EMB_DIM = 20, 48, 1e-3, 32
# Each digit class has ~180 training samples: the lists must be longer than a class to
# hold negatives at all (with k=32 they are all positives once training has started).
DIGITS_K = 256
METRICS = ("precision_at_1", "mean_average_precision_at_r")


def evaluate(model, dataset):
    m = evaluate_embeddings(embed_dataset(model, dataset.data), dataset.labels, include=METRICS)
    return m["precision_at_1"], m["mean_average_precision_at_r"]


def run_method(method: str, seed: int, train, test) -> dict:
    """Train one model; per epoch: test (P@1, MAP@R), train-class MAP@R, mean training error e."""
    torch.manual_seed(seed)
    model = MLP([64, 256, EMB_DIM])
    curve = {"test": [evaluate(model, test)], "train": [evaluate(model, train)[1]], "e": []}
    sampler, errors = None, []
    if method in ("smart", "random"):
        # Both use the batch layout and the paper's losses; only the triplets differ.
        global_miner = SmartMiner(kappa=1.0, k=DIGITS_K, seed=seed, index_method="exact")
        sampler = SmartBatchSampler(global_miner, BATCH, mined_fraction=1.0 if method == "smart" else 0.0,
                                    warmup_epochs=2, seed=seed, labels=train.labels)
        miner = SmartMiner(batch_layout=True)
        loss_fn = MultipleLosses([RatioTripletLoss(margin=0.2), GlobalLoss(lambda_=1.0, t=0.01)])
    else:
        miner = TripletMarginMiner(margin=0.2, type_of_triplets="semihard")
        loss_fn = TripletMarginLoss(margin=0.2)

    def on_iteration(info):
        if sampler is not None:
            errors.append(miner.fraction_active)

    def on_epoch_end(epoch, record):
        curve["test"].append(evaluate(model, test))
        curve["train"].append(evaluate(model, train)[1])
        curve["e"].append(statistics.mean(errors) if errors else float("nan"))
        errors.clear()
        if sampler is not None:
            sampler.update(embed_dataset(model, train.data), train.labels)

    train_metric_model(model, train.data, train.labels, loss_fn, miner, batch_size=BATCH, epochs=EPOCHS, lr=LR,
                       seed=seed, sampler=sampler, on_iteration=on_iteration, on_epoch_end=on_epoch_end)
    return curve


def _first_epoch_reaching(values: list[float], target: float) -> str:
    """Epoch (1-based; index 0 is the untrained model) whose value first reaches target."""
    hit = next((e for e, v in enumerate(values) if e > 0 and v >= target), None)
    return str(hit) if hit is not None else f"not within {EPOCHS}"


def accuracy_part(seeds: list[int]) -> str:
    train, test = digits_split()
    methods = {"smart": "smart mining + global loss (SmartBatchSampler, kappa=1, k=256)",
               "random": "random triplets (same sampler and losses, mined_fraction=0)",
               "semihard": 'PML TripletMarginMiner("semihard") + TripletMarginLoss(margin=0.2)'}
    runs = {}
    for method in methods:
        runs[method] = [run_method(method, seed, train, test) for seed in seeds]
        print(method, [r["test"][-1] for r in runs[method]], flush=True)

    def mean_curve(method, key, index=None):
        return [statistics.mean(r[key][e] if index is None else r[key][e][index] for r in runs[method])
                for e in range(EPOCHS + 1)]

    test_map = {m: mean_curve(m, "test", 1) for m in methods}
    train_map = {m: mean_curve(m, "train") for m in methods}
    target, train_target = test_map["random"][-1], train_map["random"][-1]
    untrained = test_map["smart"][0]
    lines = [f"Untrained MLP (epoch 0, same init for all): test MAP@R {untrained:.4f}. Targets: the random "
             f"baseline's final mean MAP@R, {target:.4f} on the test classes 5-9 and {train_target:.4f} on "
             "the training classes 0-4.", "",
             "| method | test P@1 (mean ± sd) | test MAP@R (mean ± sd) | epochs to the random baseline's test "
             "MAP@R | train-class MAP@R | epochs to the random baseline's train-class MAP@R "
             "| training error e, last epoch |",
             "|---|---|---|---|---|---|---|"]
    for method, name in methods.items():
        p1 = [r["test"][-1][0] for r in runs[method]]
        mapr = [r["test"][-1][1] for r in runs[method]]
        e_last = statistics.mean(r["e"][-1] for r in runs[method])
        lines.append(f"| {name} | {statistics.mean(p1):.4f} ± {statistics.stdev(p1):.4f} | "
                     f"{statistics.mean(mapr):.4f} ± {statistics.stdev(mapr):.4f} | "
                     f"{_first_epoch_reaching(test_map[method], target)} | {train_map[method][-1]:.4f} | "
                     f"{_first_epoch_reaching(train_map[method], train_target)} | "
                     f"{'n/a' if e_last != e_last else f'{e_last:.3f}'} |")
    lines += ["", "Mean MAP@R per epoch (test classes 5-9 / training classes 0-4):", "",
              "| epoch | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for e in range(EPOCHS + 1):
        lines.append(f"| {e} | " + " | ".join(f"{test_map[m][e]:.4f} / {train_map[m][e]:.4f}" for m in methods) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------- main
def replace_section(text: str, title: str, body: str) -> str:
    marker = f"## {title}"
    start = text.find(marker)
    section = f"{marker}\n\n{body}\n"
    if start < 0:
        return text.rstrip("\n") + "\n\n" + section
    end = text.find("\n## ", start + len(marker))
    return text[:start] + section + ("" if end < 0 else text[end + 1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("speed", "accuracy", "all"), default="all")
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--small-n", type=int, default=10_000)
    parser.add_argument("--exact-rows", type=int, default=8192,
                        help="anchors timed for exact global hard mining (the time is scaled to N)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    command = "python " + " ".join([pathlib.Path(sys.argv[0]).as_posix()] + sys.argv[1:])
    load = os.getloadavg()[0]
    stamp = (f"Command: `{command}`; date {datetime.date.today()}; torch {torch.__version__}, "
             f"pml_ext {pml_ext.__version__}; 1-min load average at start {load:.1f} on {os.cpu_count()} cores.")
    text = RESULTS.read_text() if RESULTS.exists() else "# Smart mining benchmarks\n"
    if args.part in ("speed", "all"):
        body = speed_part(args.n, args.small_n, args.exact_rows)
        text = replace_section(text, "Speed", f"{stamp} {args.threads} threads.\n\n{body}")
    if args.part in ("accuracy", "all"):
        # Batches of 48 are far too small for two OpenMP threads: on a shared machine one
        # thread is ~25x faster here (measured), and the results do not depend on it.
        torch.set_num_threads(1)
        body = accuracy_part(args.seeds)
        text = replace_section(text, "Accuracy on digits", f"{stamp} 1 thread.\n\n{body}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
