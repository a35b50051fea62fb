"""The k nearest other class centres of every class: exact FAISS search, ties by class id."""
from __future__ import annotations

import torch

__all__ = ["nearest_centres"]

# Candidates searched beyond the k + 1 needed (the class itself is among them), so that
# centres at equal distance around the k-th are all seen and ordered by class id, whichever
# order FAISS's float32 search met them in.
_TIE_MARGIN = 8


def nearest_centres(centres: torch.Tensor, has_centre: torch.Tensor, k: int) -> torch.Tensor:
    """Each class's ``k`` nearest other classes by Euclidean centre distance: ``LongTensor[C, k]``.

    Args:
        centres: ``Tensor[C, d]`` class centres (rows of classes without a centre are ignored).
        has_centre: ``BoolTensor[C]``, the classes with a centre.
        k: neighbours per class, ``1 <= k``.

    Rows are nearest first, equal distances in increasing class id; a class without a centre
    is nobody's neighbour and gets a row of -1, as do the slots beyond the other classes
    with a centre. The search is FAISS's exact ``IndexFlatL2`` (measured by
    ``benchmarks/bench_global_scale.py`` at 143k classes on one core: ~40 s, where sorting
    the ``[C, C]`` distance matrix row by row took ~40 min); the candidates' distances are
    then recomputed in the difference form, which is exact for equal distances, and the
    candidates sorted by (distance, class id).
    """
    import faiss
    from pytorch_metric_learning.distances import LpDistance

    from ..index._faiss_ops import IndexedPoints, as_faiss_input

    num_classes = centres.shape[0]
    out = torch.full((num_classes, k), -1, dtype=torch.long)
    ids = has_centre.nonzero().flatten()  # increasing: positions order like class ids
    if ids.numel() < 2:
        return out
    points = IndexedPoints(centres[ids].float(), None, LpDistance(normalize_embeddings=False))
    width = min(ids.numel(), k + 1 + _TIE_MARGIN)
    index = faiss.IndexFlatL2(points.dim)
    index.add(as_faiss_input(points.data))
    found = torch.from_numpy(index.search(as_faiss_input(points.data), width)[1]).long()  # [n, width]
    found = torch.sort(found, dim=1).values  # by position = by class id, for the stable sort below
    rows = torch.arange(ids.numel()).unsqueeze(1).expand_as(found)
    dist = points.pair_values(points.data, rows.reshape(-1), found.reshape(-1)).view(found.shape)
    dist[found == rows] = float("inf")  # the class itself
    dist, order = torch.sort(dist, dim=1, stable=True)
    nearest = ids[found.gather(1, order[:, :k])]
    out[ids, :nearest.shape[1]] = torch.where(dist[:, :k].isinf(), -1, nearest)
    return out
