"""Validation of every FAISS parameter ``EmbeddingIndex`` passes on, before FAISS sees it.

FAISS checks few of its parameters: ``IndexHNSWFlat`` aborts the process for ``M=0``,
segfaults for ``M=1`` (its level multiplier is ``1 / log(M)``) and grows memory without
bound for a negative ``M`` (cast to a huge unsigned size); a huge ``efSearch`` allocates
its candidate heap up front; IVF's k-means refuses fewer points than cells only when it
is trained. So every parameter is checked here for type and range (in the constructor,
so a config fails at start-up), and ``check_for_data`` checks what depends on the data
(``nlist <= N``, ``d >= 1``) at ``build``, before any FAISS call.

The upper limits are far above any useful value (the benchmarked defaults are M=16,
efConstruction=48, efSearch=40, nprobe=16, niter=10) and keep one index's memory and
time bounded; ``tests/test_faiss_fuzz.py`` runs random, zero, negative and huge values in
subprocesses under a memory cap.
"""
from __future__ import annotations

import os
from typing import Any

from ..utils.checks import check_int

__all__ = ["METHODS", "check_index_args", "PARAM_LIMITS", "MAX_THREADS", "MAX_SEED", "check_faiss_params", "check_num_threads",
           "check_seed", "check_for_data"]

METHODS = ("auto", "exact", "hnsw", "ivf")

# name -> (lowest, highest) accepted value, per method.
PARAM_LIMITS: dict[str, dict[str, tuple[int, int]]] = {
    "exact": {},
    "hnsw": {"M": (2, 512), "efConstruction": (1, 65_536), "efSearch": (1, 65_536)},
    "ivf": {"nlist": (1, 1 << 20), "nprobe": (1, 1 << 20), "niter": (1, 1_000),
            "max_points_per_centroid": (1, 1 << 24)},
}
PARAM_LIMITS["auto"] = PARAM_LIMITS["hnsw"]  # "auto" is exact or HNSW; only HNSW has parameters

# OpenMP starts one thread (and one stack) per requested thread: cap far above the cores.
MAX_THREADS = max(64, os.cpu_count() or 1)
# FAISS keeps IVF's k-means seed in a C int.
MAX_SEED = 2**31 - 1


def check_faiss_params(method: str, params: dict[str, Any]) -> dict[str, int | None]:
    """``params`` as ints within ``PARAM_LIMITS[method]``; ``nlist=None`` means the default.

    ``ValueError`` names an unknown parameter or one out of range, ``TypeError`` a non-int.
    """
    allowed = PARAM_LIMITS[method]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"faiss_params {unknown} are not parameters of method {method!r}; "
                         f"allowed: {sorted(allowed)}")
    checked: dict[str, int | None] = {}
    for name, value in params.items():
        if name == "nlist" and value is None:
            checked[name] = None
            continue
        lo, hi = allowed[name]
        checked[name] = check_int(value, name, lo, hi)
    return checked


def check_index_args(method: Any, params: dict[str, Any], seed: Any = 0,
                     num_threads: Any = None) -> dict[str, int | None]:
    """Everything ``EmbeddingIndex`` checks except the distance: for owners that build an
    index later (``SmartMiner``) and must fail at start-up. Returns the checked params."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    check_seed(seed)
    check_num_threads(num_threads)
    return check_faiss_params(method, params)


def check_num_threads(num_threads: Any) -> int | None:
    """``None`` (keep FAISS's setting) or an int in ``[1, MAX_THREADS]``."""
    if num_threads is None:
        return None
    return check_int(num_threads, "num_threads", 1, MAX_THREADS)


def check_seed(seed: Any) -> int:
    """An int in ``[0, MAX_SEED]``."""
    return check_int(seed, "seed", 0, MAX_SEED)


def check_for_data(method: str, params: dict[str, int | None], num_points: int, dim: int) -> None:
    """The checks that depend on the data: ``d >= 1`` and, for IVF, ``nlist <= N``."""
    if dim < 1:
        raise ValueError(f"embeddings must have at least 1 column to be indexed, got {dim}")
    nlist = params.get("nlist")
    if method == "ivf" and nlist is not None and nlist > num_points:
        raise ValueError(f"nlist={nlist} exceeds the {num_points} indexed points: IVF needs at least "
                         "one point per cell (nlist <= N)")
