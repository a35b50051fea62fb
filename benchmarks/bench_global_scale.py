"""Global mining at 100k and 1M bank rows: its per-epoch cost against an epoch of training.

Data: N synthetic glyph-like training samples, N/7 classes of 7-8 samples (labels
``arange(N) % C``, shuffled), d = 64 unit-norm embeddings around random class directions
(isotropic noise 0.1 per direction, seeded ``torch.Generator``).

Mining, per epoch (``--threads`` torch/FAISS threads):

* ``write``: one epoch of ``EmbeddingBank.write`` calls, N/64 batches of 64 rows in a
  shuffled order (what ``BankWriter`` does after every training forward pass);
* class-level hard batches (``ClassHardBatchSampler``, batch 64 = 32 classes x 2, groups
  of 4 classes per seed, 8 neighbours, random share 0.5): ``update(bank)`` (class
  centres), the class centres' neighbour search (``near_classes()``), then
  ``epoch_batches()`` (the batch building, which reuses that search); the same with the
  centres updated every 2nd epoch (update and search paid every other epoch);
* ``--smart-sizes``: ``SmartMiner(k=32).update`` from the bank's rows: the first epoch
  (index built from scratch) and the next one, after the rows drifted (noise 0.02 per
  direction), which takes the incremental refresh.

Reference: seconds of one training step (forward + backward + Adam, ContrastiveLoss, batch
64 = 32 classes x 2 random 32x32 images, no data loading) of the two glyph trunks with
their MLP embedders, times N/64: an epoch of N images at that speed, loading excluded (so
the reference is a lower bound and the ratio an upper one). Trunks: GlyphCNN 32-64-128 +
MLP 128-64, and the main job's GlyphPoolCNN 16-32-64-64 (pools after the first three
blocks) + MLP 64-64. Mining and training steps are timed in the same process, alternating
over ``--rounds`` rounds: ratios use each round's own figures, reported as min and median.
Both wall time and this process's CPU time (all its threads) are recorded: on a machine
shared with other jobs the CPU-time ratio is the steadier measure of the work.

``--centre-search METHOD`` (``hnsw``, ``ivf``, ``auto``; ``--centre-params`` a JSON dict of
its parameters) adds the same class-level rows with that approximate centre search
(``near, approximate`` ...) and the recall@8 of its near classes against the exact ones.
``--centres grouped`` draws the class directions in groups of 50 (a random unit head per
group plus an offset in the group's own random 16-dimensional subspace, s.d. 0.3, and
isotropic noise 0.03, normalised): near classes then form families, as similar glyphs do,
where the default isotropic directions have no structure for an index to exploit.

``--brute-blocks B`` also times the blocked ``torch.cdist`` + stable sort the sampler's
neighbour search used before FAISS, on B blocks of 1,024 centre rows, extrapolated to C.

    python benchmarks/bench_global_scale.py                       # N = 100k, 1M
    python benchmarks/bench_global_scale.py --sizes 100000 --smart-sizes 100000
    python benchmarks/bench_global_scale.py --threads 1 --smart-sizes --centre-search hnsw
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import statistics
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pml_ext import ClassHardBatchSampler, EmbeddingBank, GlyphCNN, GlyphPoolCNN, MLP, SmartMiner  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "global_scale.md"
PER_CLASS, DIM, BATCH, SPREAD, DRIFT = 7, 64, 64, 0.1, 0.02
GROUP, GROUP_DIM, GROUP_SPREAD, GROUP_NOISE = 50, 16, 0.3, 0.03  # --centres grouped
SAMPLER = {"batch_size": 64, "classes_per_batch": 32, "samples_per_class": 2, "classes_per_seed": 4,
           "neighbours": 8, "random_share": 0.5, "seed": 0}
TRUNKS = {"GlyphCNN 32-64-128 + MLP 128-64": lambda: (GlyphCNN(), MLP([128, 64])),
          "GlyphPoolCNN 16-32-64-64 + MLP 64-64 (main job)":
              lambda: (GlyphPoolCNN([16, 32, 64, 64], [True, True, True, False]), MLP([64, 64]))}


def class_data(num_points: int, seed: int = 0, grouped: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Tensor[N, d] unit-norm embeddings, LongTensor[N] labels)``, see the module docstring."""
    gen = torch.Generator().manual_seed(seed)
    num_classes = num_points // PER_CLASS
    labels = (torch.arange(num_points) % num_classes)[torch.randperm(num_points, generator=gen)]
    directions = torch.nn.functional.normalize(torch.randn(num_classes, DIM, generator=gen), dim=1)
    if grouped:
        directions = grouped_directions(directions, gen)
    x = directions[labels].add_(SPREAD * torch.randn(num_points, DIM, generator=gen))
    return torch.nn.functional.normalize(x, dim=1, out=x), labels


def grouped_directions(heads: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Class directions ``Tensor[C, d]`` in groups of ``GROUP`` around the first ``C / GROUP``
    rows of ``heads`` (module docstring)."""
    num_classes = heads.shape[0]
    num_groups = max(1, num_classes // GROUP)
    group = torch.arange(num_classes) % num_groups
    bases = torch.linalg.qr(torch.randn(num_groups, DIM, GROUP_DIM, generator=gen))[0]
    offset = torch.einsum("nr,ndr->nd", torch.randn(num_classes, GROUP_DIM, generator=gen), bases[group])
    x = heads[group] + GROUP_SPREAD * offset + GROUP_NOISE * torch.randn(num_classes, DIM, generator=gen)
    return torch.nn.functional.normalize(x, dim=1)


def _seconds(fn) -> tuple[float, float]:
    """``(wall, CPU)`` seconds of ``fn()`` (CPU: this process's, all threads)."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def _add(*times: tuple[float, float]) -> tuple[float, float]:
    return sum(t[0] for t in times), sum(t[1] for t in times)


def write_epoch(bank: EmbeddingBank, x: torch.Tensor, epoch: int, gen: torch.Generator) -> tuple[float, float]:
    """Seconds of one epoch of batch writes of ``x: Tensor[N, d]`` in a shuffled order."""
    order = torch.randperm(x.shape[0], generator=gen)
    rows = x[order]  # the model's outputs, batch after batch (gathered outside the timing)

    def write():
        for first in range(0, x.shape[0], BATCH):
            bank.write(order[first:first + BATCH], rows[first:first + BATCH], epoch=epoch)

    return _seconds(write)


def class_mining(x: torch.Tensor, labels: torch.Tensor, seed: int, search: dict | None = None) -> dict:
    """Seconds of the class-level recipe's epoch work (module docstring); ``search``: the
    ``centre_search`` arguments of the approximate rows (``None``: none)."""
    bank = EmbeddingBank(x.shape[0], DIM)
    times = {"write": write_epoch(bank, x, 1, torch.Generator().manual_seed(seed))}
    sampler = ClassHardBatchSampler(labels, **SAMPLER)
    times["update"] = _seconds(lambda: sampler.update(bank))
    times["near"] = _seconds(sampler.near_classes)
    times["batches"] = _seconds(lambda: sampler.epoch_batches(1))  # reuses the search just made
    times["class total"] = _add(times["write"], times["update"], times["near"], times["batches"])
    # Centres updated every 2nd epoch: the update and the search are paid every other epoch.
    half = tuple(t / 2 for t in _add(times["update"], times["near"]))
    times["class total, centres every 2nd epoch"] = _add(times["write"], half, times["batches"])
    if search:
        approximate = ClassHardBatchSampler(labels, **SAMPLER, **search).update(bank)
        near = {}
        times["near, approximate"] = _seconds(lambda: near.update(found=approximate.near_classes()))
        times["batches, approximate"] = _seconds(lambda: approximate.epoch_batches(1))
        times["class total, approximate"] = _add(times["write"], times["update"], times["near, approximate"],
                                                 times["batches, approximate"])
        half = tuple(t / 2 for t in _add(times["update"], times["near, approximate"]))
        times["class total, approximate, centres every 2nd epoch"] = _add(times["write"], half,
                                                                          times["batches, approximate"])
        times["recall"] = recall(near["found"], sampler.near_classes())
    return times


def recall(found: torch.Tensor, exact: torch.Tensor) -> float:
    """Share of the exact near-class lists' entries (``LongTensor[C, k]``, -1 slots left out)
    that ``found`` holds in the same row."""
    valid = exact >= 0
    return float(((found.unsqueeze(2) == exact.unsqueeze(1)).any(dim=2) & valid).sum() / valid.sum())


def smart_mining(x: torch.Tensor, labels: torch.Tensor, seed: int) -> dict:
    """Seconds of ``SmartMiner.update`` from a bank: a first epoch, then a drifted one."""
    gen = torch.Generator().manual_seed(seed)
    bank, miner = EmbeddingBank(x.shape[0], DIM), SmartMiner(k=32, seed=seed)
    write_epoch(bank, x, 1, gen)
    times = {"smart first": _seconds(lambda: miner.update(bank.embeddings, labels))}
    drifted = torch.nn.functional.normalize(x + DRIFT * torch.randn(x.shape, generator=gen), dim=1)
    write = write_epoch(bank, drifted, 2, gen)
    times["smart next"] = _seconds(lambda: miner.update(bank.embeddings, labels))
    times["smart total"] = _add(write, times["smart next"])
    times["smart next incremental"] = miner.ann_incremental
    return times


def step_seconds(steps: int) -> dict[str, tuple[float, float]]:
    """Median ``(wall, CPU)`` seconds of a training step per trunk (module docstring)."""
    from pytorch_metric_learning.losses import ContrastiveLoss

    gen = torch.Generator().manual_seed(0)
    images = torch.rand(BATCH, 1, 32, 32, generator=gen)
    labels = torch.arange(BATCH // 2).repeat_interleave(2)
    out = {}
    for name, build in TRUNKS.items():
        torch.manual_seed(0)
        trunk, embedder = build()
        params = list(trunk.parameters()) + list(embedder.parameters())
        optimizer, loss_fn = torch.optim.Adam(params, lr=1e-3), ContrastiveLoss()

        def step():
            optimizer.zero_grad()
            loss_fn(embedder(trunk(images)), labels).backward()
            optimizer.step()

        for _ in range(3):  # warm-up
            step()
        timed = [_seconds(step) for _ in range(steps)]
        out[name] = tuple(statistics.median(t[clock] for t in timed) for clock in (0, 1))
    return out


def brute_near_seconds(centres: torch.Tensor, blocks: int) -> tuple[float, float]:
    """The blocked ``torch.cdist`` + stable sort over all C centres (the neighbour search before
    FAISS), timed on ``blocks`` blocks of 1,024 rows and extrapolated to C rows."""
    done = min(blocks * 1024, centres.shape[0])

    def search():
        for first in range(0, done, 1024):
            torch.sort(torch.cdist(centres[first:first + 1024], centres), dim=1, stable=True)

    return tuple(t * centres.shape[0] / done for t in _seconds(search))


def measure(n: int, args) -> list[dict]:
    x, labels = class_data(n, seed=n, grouped=args.centres == "grouped")
    warm_x, warm_labels = class_data(7 * 1024)
    search = {"centre_search": args.centre_search, "centre_search_params": json.loads(args.centre_params)} \
        if args.centre_search else None
    class_mining(warm_x, warm_labels, seed=0, search=search)  # first calls pay one-off set-up costs
    rounds = []
    for r in range(args.rounds):
        row = {"n": n, **class_mining(x, labels, seed=r, search=search)}
        if n in args.smart_sizes:
            row.update(smart_mining(x, labels, seed=r))
        row["steps"] = step_seconds(args.steps)
        if args.brute_blocks and r == 0:
            sampler = ClassHardBatchSampler(labels, **SAMPLER).update(x)
            row["brute near"] = brute_near_seconds(sampler.centres, args.brute_blocks)
        print(row, flush=True)
        rounds.append(row)
    return rounds


def _stat(values: list[float], spec: str = ".2f") -> str:
    return f"{format(min(values), spec)} / {format(statistics.median(values), spec)}"


_APPROXIMATE = ("near, approximate", "batches, approximate", "class total, approximate",
                "class total, approximate, centres every 2nd epoch")
WORKS = ("write", "update", "near", "batches", "class total", "class total, centres every 2nd epoch",
         *_APPROXIMATE, "smart first", "smart next", "smart total", "brute near")
JUDGED = ("class total", "class total, centres every 2nd epoch", *_APPROXIMATE[2:], "smart total")  # <= 10 %?


def table(rounds: list[dict]) -> list[str]:
    """Per N: each trunk's epoch seconds, then each work's seconds and share of those epochs,
    in wall and in CPU time (clock 0 and 1)."""
    shares = [f"% of {t.split(' ')[0]} epoch ({clock})" for clock in ("wall", "CPU") for t in TRUNKS]
    lines = ["| N | work | wall s | CPU s | " + " | ".join(shares) + " |", "|---|---|---|---|" + "---|" * len(shares)]
    for n in sorted({r["n"] for r in rounds}):
        mine = [r for r in rounds if r["n"] == n]

        def epoch(r, trunk, clock):
            return r["steps"][trunk][clock] * n / BATCH

        cells = [f"{_stat([epoch(r, t, c) for r in mine], '.0f')} s" for c in (0, 1) for t in TRUNKS]
        lines.append(f"| {n:,} | epoch (N/{BATCH} training steps) | | | " + " | ".join(cells) + " |")
        for work in (w for w in WORKS if w in mine[0]):
            done = [r for r in mine if work in r]
            cells = []
            for clock in (0, 1):
                for t in TRUNKS:
                    ratios = [100 * r[work][clock] / epoch(r, t, clock) for r in done]
                    mark = (" **over**" if statistics.median(ratios) > 10 else " ok") if work in JUDGED else ""
                    cells.append(f"{_stat(ratios, '.1f')}{mark}")
            lines.append(f"| {n:,} | {work} | {_stat([r[work][0] for r in done])} | "
                         f"{_stat([r[work][1] for r in done])} | " + " | ".join(cells) + " |")
        if "recall" in mine[0]:
            lines.append(f"| {n:,} | recall@{SAMPLER['neighbours']} of the approximate near classes vs exact | "
                         f"{_stat([r['recall'] for r in mine], '.3f')} |" + " |" * (1 + len(shares)))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--smart-sizes", type=int, nargs="*", default=[100_000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per trunk and round")
    parser.add_argument("--brute-blocks", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--centre-search", choices=["hnsw", "ivf", "auto"], default=None,
                        help="add rows with this approximate centre search")
    parser.add_argument("--centre-params", default="{}", help="its parameters, a JSON dict")
    parser.add_argument("--centres", choices=["isotropic", "grouped"], default="isotropic")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args()
    import faiss

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    load = os.getloadavg()[0]
    rounds = [row for n in args.sizes for row in measure(n, args)]
    command = "python " + " ".join(["benchmarks/bench_global_scale.py"] + sys.argv[1:])
    text = "\n".join([
        f"### {', '.join(f'{n:,}' for n in args.sizes)} bank rows ({datetime.date.today().isoformat()})", "",
        f"Command: `{command}`; torch {torch.__version__}, {args.threads} threads; {args.rounds} rounds, "
        f"seconds and ratios as min / median over rounds; 1-min load average {load:.1f} at the start and "
        f"{os.getloadavg()[0]:.1f} at the end, on 2 cores shared with other jobs.", "", *table(rounds), ""])
    print(text)
    out = pathlib.Path(args.output)
    previous = out.read_text() if out.exists() else _HEADER
    tmp = out.with_suffix(".tmp")
    tmp.write_text(previous.rstrip("\n") + "\n\n" + text)
    os.replace(tmp, out)


_HEADER = """## Global mining at 100k and 1M bank rows

The class-level recipe's and smart mining's per-epoch work (bank writes, class centres,
batch building; the smart miner's k-NN refresh) against an epoch of that many images at
the glyph trunks' training speed (GlyphCNN 32-64-128 + MLP, and the main job's
GlyphPoolCNN 16-32-64-64 + MLP; training steps only, no data loading); the target is
<= 10 % (`benchmarks/bench_global_scale.py` describes the data and what is timed; the
verdict is under "What the figures say"). Cells are min / median over rounds, each ratio
taken within a round. "work" rows: `write` one epoch of bank writes, `update` class centres, `near` the class centres' neighbour search, `batches` the epoch's
batches from it, `class total` = write + update + near + batches, `class total, centres
every 2nd epoch` = write + (update + near) / 2 + batches;
`smart first` / `smart next` SmartMiner's update on a fresh / drifted bank, `smart total` =
write + smart next (the steady state); `brute near` the neighbour search as it was before
FAISS (extrapolated from a few blocks). With `--centre-search`: the same rows with an
approximate centre search (`near, approximate` ...), and the recall@8 of its near classes
against the exact ones (in the wall-s column).
"""


if __name__ == "__main__":
    main()
