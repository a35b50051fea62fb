"""Child process of tests/test_faiss_fuzz.py: runs FAISS-parameter cases under a memory cap.

Usage: ``python faiss_fuzz_child.py <group> <seed>``. After importing torch and FAISS it
caps its address space (``RLIMIT_AS``) at the current size plus ``HEADROOM``, then runs
every case of ``group`` and prints one line per case, flushed before the next starts:
a JSON object ``{"case", "param", "value", "outcome"}`` with the outcome ``ok``,
``ValueError``, ``TypeError`` or ``OTHER <type>: <message>``. A case that kills the
process (signal) or runs out of memory leaves its ``START <case>`` line as the last one.
"""
from __future__ import annotations

import json
import random
import resource
import sys

import numpy as np
import torch

import pml_ext  # noqa: F401  (imports FAISS)
from pml_ext import EmbeddingIndex, HardNeighborSampler, SmartMiner
from pml_ext.index.faiss_params import MAX_THREADS

HEADROOM = 1536 * 2**20  # bytes of address space a case may add
NUM_POINTS, DIM, K = 200, 8, 5


def cap_memory() -> None:
    with open("/proc/self/status") as f:
        size_kb = next(int(line.split()[1]) for line in f if line.startswith("VmSize:"))
    limit = size_kb * 1024 + HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def values_for(name: str, rng: random.Random) -> list:
    """Zero, negative, edge, huge, random and wrong-type values for one parameter."""
    fixed = [0, -1, -4, 1, 2, 3, 17, NUM_POINTS, NUM_POINTS + 1, 2**20 + 1, 2**31, 2**40, -(2**63),
             np.int64(7), 2.5, "8", None, True]
    rand = [rng.choice([-1, 1]) * int(2 ** rng.uniform(0, 34)) for _ in range(3)]
    return fixed + rand + [rng.randint(1, 600) for _ in range(2)]


def check_answer(index: EmbeddingIndex, x: torch.Tensor) -> None:
    """The index ran correctly: k real neighbours per point, not itself, true distances, sorted."""
    d, i = index.knn_all(K)
    assert i.shape == (NUM_POINTS, K) and bool((i >= 0).all()) and bool((i < NUM_POINTS).all())
    assert not bool((i == torch.arange(NUM_POINTS)[:, None]).any())
    true = torch.cdist(x.double(), x.double()).gather(1, i)
    assert torch.allclose(d.double(), true, atol=1e-4), "distances are not the true ones"
    assert bool((d[:, 1:] >= d[:, :-1] - 1e-6).all()), "not sorted"


def cases(group: str, rng: random.Random):
    """``(case, param, value, thunk)``; a thunk raises or returns after checking its answer."""
    x = torch.randn(NUM_POINTS, DIM, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(NUM_POINTS) % 10
    method = {"hnsw": "hnsw", "ivf": "ivf"}.get(group)
    if method is not None:
        from pml_ext.index.faiss_params import PARAM_LIMITS
        for name in PARAM_LIMITS[method]:
            for v in values_for(name, rng):
                yield f"{method} {name}={v!r}", name, v, (lambda v=v, name=name: check_answer(
                    EmbeddingIndex(method, distance=_l2(), **{name: v}).build(x), x))
        return
    for v in values_for("num_threads", rng) + [MAX_THREADS, MAX_THREADS + 1]:
        yield f"num_threads={v!r}", "num_threads", v, (lambda v=v: check_answer(
            EmbeddingIndex("hnsw", distance=_l2(), num_threads=v).build(x), x))
    for v in values_for("seed", rng):
        yield f"seed={v!r}", "seed", v, (lambda v=v: check_answer(EmbeddingIndex("ivf", distance=_l2(), seed=v).build(x), x))
    for v in values_for("M", rng)[:8]:
        yield f"SmartMiner hnsw M={v!r}", "M", v, (lambda v=v: SmartMiner(
            index_method="hnsw", index_params={"M": v}, k=K).update(x, labels))
        yield f"HardNeighborSampler num_threads={v!r}", "num_threads", v, (lambda v=v: HardNeighborSampler(
            labels, 20, method="hnsw", num_threads=v).update(x))
    for v in values_for("nlist", rng)[:10]:
        yield f"SmartMiner ivf nlist={v!r}", "nlist", v, (lambda v=v: SmartMiner(
            index_method="ivf", index_params={"nlist": v}, k=K).update(x, labels))


def _l2():
    from pytorch_metric_learning.distances import LpDistance
    return LpDistance(normalize_embeddings=False)


def main() -> None:
    group, seed = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(1)
    cap_memory()
    for name, param, value, thunk in cases(group, random.Random(seed)):
        print(f"START {name}", flush=True)
        try:
            thunk()
            outcome = "ok"
        except (ValueError, TypeError) as exc:
            outcome = type(exc).__name__
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the test
            outcome = f"OTHER {type(exc).__name__}: {exc}"
        plain = int(value) if isinstance(value, (int, np.integer)) and not isinstance(value, bool) \
            else type(value).__name__
        print(json.dumps({"case": name, "param": param, "value": plain, "outcome": outcome}), flush=True)


if __name__ == "__main__":
    main()
