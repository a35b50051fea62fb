"""GlyphCNN's memory layout: channels_last (NHWC, the default) against plain NCHW.

Times, in CPU seconds of this process (1 thread, far less sensitive than wall time to other
jobs on the two cores), a training step (batch 64, forward + backward) and an embedding pass
(batch 1,024, eval mode, no grad) of the default GlyphCNN in both layouts, interleaved over
rounds so that machine noise hits both sides alike; medians and the ratio.

    python benchmarks/bench_glyph_cnn.py            # writes results/glyph_cnn.md
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
from pml_ext import GlyphCNN  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "glyph_cnn.md"


def _cpu_seconds(fn, repeats: int) -> float:
    start = time.process_time()
    for _ in range(repeats):
        fn()
    return (time.process_time() - start) / repeats


def _nchw(model: GlyphCNN) -> torch.nn.Sequential:
    plain = torch.nn.Sequential(*model)  # the same modules without GlyphCNN's NHWC forward
    return plain.to(memory_format=torch.contiguous_format)


def measure(rounds: int, repeats: int) -> dict[str, list[float]]:
    torch.manual_seed(0)
    fast = GlyphCNN()
    slow = _nchw(GlyphCNN())
    batch, big = torch.rand(64, 1, 32, 32), torch.rand(1024, 1, 32, 32)

    def step(model):
        model.train()
        model(batch).square().sum().backward()

    def embed(model):
        model.eval()
        with torch.no_grad():
            model(big)

    times = {k: [] for k in ("step NHWC", "step NCHW", "embed NHWC", "embed NCHW")}
    for model in (fast, slow):
        step(model), embed(model)  # warm-up
    for _ in range(rounds):
        times["step NHWC"].append(_cpu_seconds(lambda: step(fast), repeats))
        times["step NCHW"].append(_cpu_seconds(lambda: step(slow), repeats))
        times["embed NHWC"].append(_cpu_seconds(lambda: embed(fast), 2))
        times["embed NCHW"].append(_cpu_seconds(lambda: embed(slow), 2))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    t = {k: statistics.median(v) * 1e3 for k, v in measure(args.rounds, args.repeats).items()}
    lines = ["# GlyphCNN: channels_last against NCHW", "",
             f"Command: `python benchmarks/bench_glyph_cnn.py`; date {datetime.date.today()}; torch "
             f"{torch.__version__}; 1 thread; CPU ms, medians of {args.rounds} interleaved rounds; "
             f"1-min load average at start {load:.1f}.", "",
             "| pass | NCHW (ms) | channels_last (ms) | ratio |", "|---|---|---|---|"]
    for what, label in (("step", "training step, batch 64"), ("embed", "embedding pass, batch 1,024")):
        lines.append(f"| {label} | {t[what + ' NCHW']:.1f} | {t[what + ' NHWC']:.1f} | "
                     f"{t[what + ' NHWC'] / t[what + ' NCHW']:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    pathlib.Path(args.output).write_text(text)


if __name__ == "__main__":
    main()
