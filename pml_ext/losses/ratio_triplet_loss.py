"""The ratio triplet loss of smart mining (Harwood et al., ICCV 2017)."""
from __future__ import annotations

import torch
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from ..utils.checked_modules import CheckedLoss
from ..utils.checks import check_positive

__all__ = ["RatioTripletLoss"]


class RatioTripletLoss(CheckedLoss):
    """``max(0, 1 - d(a, n) / (d(a, p) + margin))`` per triplet.

    Zero exactly when ``d(a,n) >= d(a,p) + margin``, the same condition as PML's
    ``TripletMarginLoss``; unlike it, the value is scale-free (a ratio), so it stays in
    [0, 1] and a triplet's weight does not grow with the distances.

    Args:
        margin: ``m > 0`` (the paper uses 0.2 on L2-normalised embeddings); it also keeps
            the ratio finite when ``d(a,p) = 0``.
        triplets_per_anchor: used only without an ``indices_tuple``, as in
            ``TripletMarginLoss`` (``"all"`` or an int).
        **kwargs: PML loss arguments. ``distance`` must be a distance (not a similarity);
            the default ``LpDistance()`` gives the paper's Euclidean distance on
            normalised embeddings.

    ``compute_loss`` returns one loss per triplet with PML's ``"triplet"`` reduction type,
    so any PML reducer applies; the default is ``MeanReducer`` (the mean over the
    batch's triplets). Recorded: ``margin``; stat ``fraction_active`` (non-zero share).
    """

    def __init__(self, margin: float = 0.2, triplets_per_anchor="all", **kwargs):
        super().__init__(**kwargs)
        check_positive(margin, "margin")
        if self.distance.is_inverted:
            raise ValueError(f"distance: RatioTripletLoss divides distances; {type(self.distance).__name__} "
                             "is a similarity, use LpDistance")
        self.margin = float(margin)
        self.triplets_per_anchor = triplets_per_anchor
        self.add_to_recordable_attributes(list_of_names=["margin"], is_stat=False)
        self.add_to_recordable_attributes(list_of_names=["fraction_active"], is_stat=True)

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        """Losses ``Tensor[T]`` for the ``T`` triplets of ``indices_tuple`` (or of ``labels``)."""
        c_f.labels_or_indices_tuple_required(labels, indices_tuple)
        indices_tuple = lmu.convert_to_triplets(indices_tuple, labels, ref_labels,
                                                t_per_anchor=self.triplets_per_anchor)
        anchors, positives, negatives = indices_tuple
        if len(anchors) == 0:
            return self.zero_losses()
        mat = self.distance(embeddings, ref_emb)
        losses = torch.relu(1 - mat[anchors, negatives] / (mat[anchors, positives] + self.margin))
        if self.collect_stats:
            self.fraction_active = float((losses > 0).float().mean())
        return {"loss": {"losses": losses, "indices": indices_tuple, "reduction_type": "triplet"}}
