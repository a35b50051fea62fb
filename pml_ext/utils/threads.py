"""One place that sets torch's and FAISS's thread counts (the runner's ``num_threads``,
``EmbeddingIndex(num_threads=...)``)."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

__all__ = ["thread_count"]


@contextlib.contextmanager
def thread_count(num_threads: int | None) -> Iterator[None]:
    """Run the block with ``num_threads`` torch intra-op and FAISS OpenMP threads, then restore
    both; ``None`` leaves them as they are."""
    if num_threads is None:
        yield
        return
    import faiss

    previous = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(num_threads)
    faiss.omp_set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous[0])
        faiss.omp_set_num_threads(previous[1])
