"""PML's loss and miner bases with pml_ext's input checks run first, for every pml_ext loss and miner.

PML checks little at ``forward``: a negative ``indices_tuple`` entry wraps around, a
``ref_labels`` without ``ref_emb`` is ignored. pml_ext's losses and miners derive from these
bases, so each runs the same checks (``check_loss_inputs``, ``check_miner_inputs``) with the
same error messages, and none repeats the override.
"""
from __future__ import annotations

from pytorch_metric_learning.losses import BaseMetricLossFunction
from pytorch_metric_learning.miners import BaseMiner

from .checks import check_loss_inputs, check_miner_inputs

__all__ = ["CheckedLoss", "CheckedMiner"]


class CheckedLoss(BaseMetricLossFunction):
    """``BaseMetricLossFunction`` whose ``forward`` validates its inputs first."""

    def forward(self, embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None):
        """Validate (``check_loss_inputs``), then PML's ``forward``.

        Args:
            embeddings: ``[B, d]`` floating point, finite.
            labels: ``[B]`` integer, or None when ``indices_tuple`` is given.
            indices_tuple: pairs ``(a1, p, a2, n)`` or triplets ``(a, p, n)`` into the batch
                (into ``ref_emb`` for ``p`` and ``n`` when it is given). Every entry must be
                in range: PML lets a negative index wrap around, pml_ext raises on purpose.
            ref_emb: ``[R, d]`` reference embeddings, or None for the batch itself.
            ref_labels: ``[R]`` labels of ``ref_emb`` (required with ``labels`` and no tuple).
        Returns:
            The reduced loss, a scalar tensor; an empty batch or tuple gives PML's zero
            loss, connected to the graph.
        """
        check_loss_inputs(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        return super().forward(embeddings, labels, indices_tuple, ref_emb, ref_labels)


class CheckedMiner(BaseMiner):
    """``BaseMiner`` whose ``forward`` validates its inputs first."""

    def forward(self, embeddings, labels, ref_emb=None, ref_labels=None):
        """Validate (``check_miner_inputs``: errors name ``embeddings``, ``labels``, ``ref_emb``,
        ``ref_labels``), then PML's ``BaseMiner.forward``; see the miner's docstring for
        shapes. An empty batch (or reference set) gives empty tuples, as PML's miners do."""
        check_miner_inputs(embeddings, labels, ref_emb, ref_labels)
        return super().forward(embeddings, labels, ref_emb, ref_labels)
