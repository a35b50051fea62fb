"""Brute-force k-NN quality for the refresh tests (tests/test_index_refresh.py, tests/test_epoch_knn.py)."""
import torch
from pytorch_metric_learning.distances import LpDistance

from pml_ext.index.index_quality import sample_rows


def relative_distance_error(x, found, k, seed, distance=None, num_queries=256):
    """The sampled ``ED`` a refresh records, recounted: over the rows drawn with ``seed`` (the
    index's seed plus its refresh count), the mean over positions j of
    ``d(q, found_j) / d(q, exact_j) - 1`` with distances from PML's full matrix (self excluded).

    x: ``Tensor[N, d]``; found: ``LongTensor[N, >=k]``, the refreshed lists."""
    distance = distance or LpDistance()
    rows = sample_rows(x.shape[0], min(num_queries, x.shape[0]), seed)
    mat = distance(x[rows].double(), x.double())
    mat[torch.arange(len(rows)), rows] = float("inf")
    exact = torch.topk(mat, k, dim=1, largest=False).values
    return float((mat.gather(1, found[rows, :k]) / exact - 1).mean())
