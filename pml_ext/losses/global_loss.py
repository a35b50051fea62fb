"""The global loss of Kumar B G et al. (CVPR 2016), as used by smart mining (Harwood et al. 2017)."""
from __future__ import annotations

import torch
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from ..utils.checked_modules import CheckedLoss
from ..utils.checks import check_positive
from ..utils.squared_euclidean import check_rule_distance, squared_euclidean

__all__ = ["GlobalLoss"]


class GlobalLoss(CheckedLoss):
    """Mean/variance loss over a set of triplets::

        d+ = ||f_a - f_p||^2 / 4,   d- = ||f_a - f_n||^2 / 4        (in [0, 1] on unit vectors)
        J_g = var(d+) + var(d-) + lambda_ * max(0, mean(d+) - mean(d-) + t)

    with means and **population** variances over the triplets: those of the miner's
    ``indices_tuple`` (pairs are converted with ``lmu.convert_to_triplets``), or every
    triplet of the batch's labels when there is none.

    Args:
        lambda_: weight of the mean-separation term (>= 0); the paper does not give it.
        t: the margin between the two means (>= 0), 0.01 in the paper.
        **kwargs: PML loss arguments. The squared distance comes from ``distance``
            through ``pml_ext.utils.squared_euclidean`` (squared ``LpDistance``,
            ``2 - 2s`` for cosine similarity); un-normalised embeddings give values
            outside [0, 1] but the same formula.

    The loss is a statistic of the whole set of triplets, not a sum of per-triplet
    terms, so it is returned with PML's ``"already_reduced"`` type and reducers leave it
    unchanged. Weight it against the triplet term with ``MultipleLosses(weights=...)``.
    No triplet gives a zero loss connected to the graph (PML's zero loss).

    Recorded: ``lambda_``, ``t``; stats ``mean_pos``, ``mean_neg``, ``var_pos``, ``var_neg``.
    """

    def __init__(self, lambda_: float = 1.0, t: float = 0.01, **kwargs):
        super().__init__(**kwargs)
        check_rule_distance(self.distance)
        check_positive(lambda_, "lambda_", allow_zero=True)
        check_positive(t, "t", allow_zero=True)
        self.lambda_ = float(lambda_)
        self.t = float(t)
        self.add_to_recordable_attributes(list_of_names=["lambda_", "t"], is_stat=False)
        self.add_to_recordable_attributes(list_of_names=["mean_pos", "mean_neg", "var_pos", "var_neg"], is_stat=True)

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        """A scalar loss from the ``T`` triplets' squared distances ``Tensor[T]``."""
        c_f.labels_or_indices_tuple_required(labels, indices_tuple)
        anchors, positives, negatives = lmu.convert_to_triplets(indices_tuple, labels, ref_labels, t_per_anchor="all")
        if len(anchors) == 0:
            return self.zero_losses()
        sq = squared_euclidean(self.distance(embeddings, ref_emb), self.distance)
        d_pos, d_neg = sq[anchors, positives] / 4, sq[anchors, negatives] / 4
        mean_pos, mean_neg = d_pos.mean(), d_neg.mean()
        var_pos, var_neg = ((d_pos - mean_pos) ** 2).mean(), ((d_neg - mean_neg) ** 2).mean()
        loss = var_pos + var_neg + self.lambda_ * torch.relu(mean_pos - mean_neg + self.t)
        if self.collect_stats:
            self.mean_pos, self.mean_neg = float(mean_pos), float(mean_neg)
            self.var_pos, self.var_neg = float(var_pos), float(var_neg)
        return {"loss": {"losses": loss, "indices": None, "reduction_type": "already_reduced"}}
