"""A PML miner wrapper that measures which fraction of the batch's tuples the inner miner kept."""
from __future__ import annotations

import math

import torch
from pytorch_metric_learning.miners import BaseMiner
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

__all__ = ["FractionActiveMeter"]


class FractionActiveMeter(BaseMiner):
    """Run ``miner`` and record ``fraction_active`` = tuples returned / tuples possible.

    PML's miners keep the tuples that are still "active" (e.g. ``TripletMarginMiner``
    keeps the triplets that violate its margin, i.e. have a non-zero triplet loss) but
    do not record how many that is out of all candidates. This is the training error
    of smart mining's controller (docs/smart_mining.md), for any PML miner:

    - triplet miners: ``len(a) / #{(a, p, n): y_a = y_p, a != p, y_a != y_n}``;
    - pair miners: ``(len(a1) + len(a2)) / (#positive pairs + #negative pairs)``.

    The candidate count is ``sum_a P_a * N_a`` (or ``sum_a P_a + N_a``) from the label
    match matrix, so it costs one ``[B, B]`` comparison, not a triplet enumeration.

    Miners that return a fixed number of tuples (``BatchHardMiner``,
    ``IsometricHardMiner``: one triplet per anchor) need the other reading, with
    ``loss_margin=m``: the share of the *returned* triplets whose triplet-margin loss
    ``[D(a,p) - D(a,n) + m]_+`` is non-zero, i.e. ``D(a,n) - D(a,p) < m`` (similarities
    reversed), under the inner miner's distance.

    Use the meter in place of the miner and steer the inner one through it::

        meter = FractionActiveMeter(TripletMarginMiner(margin=0.05))
        controller = AdaptiveController(meter, "miner.margin", target=0.5)

    Args:
        miner: any PML miner (a callable returning a 3- or 4-tuple of index tensors).
        loss_margin: ``None`` for "returned / possible"; a number for "returned triplets
            with a non-zero margin loss / returned triplets" (triplet miners only).
        **kwargs: PML ``BaseMiner`` arguments (unused by the meter itself).

    Recorded (``_record_these``, plain float): ``fraction_active``, NaN when the batch
    has no candidate tuple (an :class:`AdaptiveController` skips NaN readings).
    """

    def __init__(self, miner: torch.nn.Module, loss_margin: float | None = None, **kwargs):
        super().__init__(**kwargs)
        if not callable(miner):
            raise TypeError(f"miner must be a callable PML miner, got {type(miner).__name__}")
        if loss_margin is not None:
            if isinstance(loss_margin, bool) or not isinstance(loss_margin, (int, float)):
                raise TypeError(f"loss_margin must be a number or None, got {type(loss_margin).__name__}")
            if not math.isfinite(loss_margin):
                raise ValueError(f"loss_margin must be finite, got {loss_margin}")
            loss_margin = float(loss_margin)
        self.miner = miner
        self.loss_margin = loss_margin
        self.fraction_active = float("nan")
        self.add_to_recordable_attributes(list_of_names=["fraction_active"], is_stat=False)

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor,
             ref_labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The inner miner's output for ``embeddings[B, d]``, ``labels[B]`` (and ``ref_emb[M, d]``)."""
        same_set = ref_emb is embeddings
        # Passing None keeps the inner miner's "batch is its own reference" path (self-pairs excluded).
        output = self.miner(embeddings, labels, None if same_set else ref_emb, None if same_set else ref_labels)
        if self.loss_margin is not None:
            self.fraction_active = self._fraction_with_nonzero_loss(output, embeddings, ref_emb)
            return output
        matches, diffs = lmu.get_matches_and_diffs(labels, None if same_set else ref_labels)
        num_pos, num_neg = matches.sum(dim=1), diffs.sum(dim=1)
        if len(output) == 3:
            candidates = int((num_pos * num_neg).sum())
            active = len(output[0])
        elif len(output) == 4:
            candidates = int(num_pos.sum() + num_neg.sum())
            active = len(output[0]) + len(output[2])
        else:
            raise TypeError(f"miner returned a {len(output)}-tuple; expected a triplet (3) or pair (4) tuple")
        self.fraction_active = active / candidates if candidates > 0 else float("nan")
        return output

    def _fraction_with_nonzero_loss(self, output: tuple[torch.Tensor, ...], embeddings: torch.Tensor,
                                    ref_emb: torch.Tensor) -> float:
        if len(output) != 3:
            raise TypeError("loss_margin needs a triplet miner; this miner returned a "
                            f"{len(output)}-tuple")
        anchors, positives, negatives = output
        if len(anchors) == 0:
            return float("nan")
        distance = getattr(self.miner, "distance", self.distance)
        mat = distance(embeddings, ref_emb)
        ap, an = mat[anchors, positives], mat[anchors, negatives]
        slack = ap - an if distance.is_inverted else an - ap
        return float((slack < self.loss_margin).float().mean())
