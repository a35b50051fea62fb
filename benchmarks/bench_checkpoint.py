"""Cost of an atomic, self-checking checkpoint against PML's plain model saving.

The objects are the glyph main job's: GlyphCNN trunk, 128 -> 64 MLP embedder, an Adam optimizer
for each (with state, after one step). Timed: ``CheckpointStore.save`` (temporary name, fsync,
rename per file, SHA-256 of each, records extent, marker; previous checkpoint deleted) against
PML's ``HookContainer.save_models`` (``torch.save`` per object, previous epoch deleted), and
``CheckpointStore.resume`` (verify every SHA-256, load) against PML's ``load_latest_saved_models``.
Median of alternating repeats, in the same run.

    python benchmarks/bench_checkpoint.py [--repeats 15]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils.logging_presets import HookContainer

import pml_ext
from pml_ext.runner.state.checkpoint_store import CheckpointStore


def objects() -> dict:
    trunk, embedder = pml_ext.GlyphCNN(), pml_ext.MLP([128, 64])
    optimizers = {f"{n}_optimizer": torch.optim.Adam(m.parameters(), lr=1e-3) for n, m in
                  (("trunk", trunk), ("embedder", embedder))}
    loss = embedder(trunk(torch.randn(8, 1, 32, 32))).pow(2).sum()
    loss.backward()
    for opt in optimizers.values():
        opt.step()
    return {"trunk": trunk, "embedder": embedder, **optimizers}


class Trainer:  # what HookContainer.save_models reads
    def __init__(self, objs):
        self.models = {k: v for k, v in objs.items() if "optimizer" not in k}
        self.optimizers = {k: v for k, v in objs.items() if "optimizer" in k}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    objs = objects()
    size = sum(p.numel() for k, m in objs.items() if "optimizer" not in k for p in m.parameters())
    times = {"store save": [], "PML save": [], "store resume": [], "PML load": []}
    with tempfile.TemporaryDirectory() as root:
        store_dir, pml_dir = os.path.join(root, "store"), os.path.join(root, "pml")
        os.makedirs(pml_dir)
        store, hooks, trainer = CheckpointStore(store_dir), HookContainer(None), Trainer(objs)
        for epoch in range(1, args.repeats + 1):
            start = time.perf_counter()
            store.save(epoch, objs, best_epoch=None)
            times["store save"].append(time.perf_counter() - start)
            start = time.perf_counter()
            hooks.save_models(trainer, pml_dir, epoch, epoch - 1)
            times["PML save"].append(time.perf_counter() - start)
            start = time.perf_counter()
            store.resume(objs)
            times["store resume"].append(time.perf_counter() - start)
            start = time.perf_counter()
            hooks.load_latest_saved_models(trainer, pml_dir, torch.device("cpu"))
            times["PML load"].append(time.perf_counter() - start)
        file_bytes = sum(os.path.getsize(os.path.join(store_dir, f)) for f in os.listdir(store_dir))
    median = {k: statistics.median(v) * 1000 for k, v in times.items()}
    print(f"{size:,} model parameters; {file_bytes / 2**20:.1f} MiB per checkpoint; "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| | median (ms) | all (ms) |\n|---|---|---|")
    for k, v in times.items():
        print(f"| {k} | {median[k]:.1f} | {', '.join(f'{x * 1000:.0f}' for x in v)} |")
    print(f"| **ratio save store / PML** | **{median['store save'] / median['PML save']:.2f}** | |")
    print(f"| **ratio resume store / PML** | **{median['store resume'] / median['PML load']:.2f}** | |")

if __name__ == "__main__":
    c_f.LOGGER.setLevel("WARNING")
    main()
