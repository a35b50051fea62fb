"""One row per training sample, filled by the training passes themselves (no extra embedding pass)."""
from __future__ import annotations

import torch

from ..utils.ann_quality import ann_quality
from ..utils.checks import check_embeddings, check_int, check_state_version
from ..utils.distributed import all_gather_uneven, first_copies, is_distributed
from ._faiss_ops import drop_self
from .index_quality import brute_force_raw

__all__ = ["EmbeddingBank"]

_STATE_KEYS = ("embeddings", "filled", "written_epoch", "written_step", "num_writes")


class EmbeddingBank:
    """The latest embedding of every training sample, as the training batches computed it.

    Every training step embeds its batch anyway; :meth:`write` keeps a detached float32
    copy of those rows (``pml_ext.hooks.BankWriter`` does it inside PML's trainers), so the
    whole training set's embeddings are at hand at the end of an epoch without a second
    pass. The price is staleness: a row is as old as the step that wrote it;
    :meth:`staleness` measures it against a fresh pass on a sample.

    Args:
        num_rows: ``N``, the training-set size (row ``i`` is dataset index ``i``).
        dim: ``d``, the embedding size.

    Attributes:
        embeddings: ``Tensor[N, d]`` float32 on the CPU; rows never written are zero.
        filled: ``BoolTensor[N]``, rows written at least once.
        written_epoch: ``LongTensor[N]``, the epoch of each row's last write (0: never written).
        written_step: ``LongTensor[N]``, the number of the :meth:`write` call that wrote the
            row last (-1: never); it decides which copy survives :meth:`gathered`.
        num_writes: the number of :meth:`write` calls so far.
    """

    def __init__(self, num_rows: int, dim: int):
        num_rows, dim = check_int(num_rows, "num_rows", 1), check_int(dim, "dim", 1)
        self.embeddings = torch.zeros(num_rows, dim)
        self.filled = torch.zeros(num_rows, dtype=torch.bool)
        self.written_epoch = torch.zeros(num_rows, dtype=torch.long)
        self.written_step = torch.full((num_rows,), -1, dtype=torch.long)
        self.num_writes = 0

    @property
    def num_rows(self) -> int:
        return self.embeddings.shape[0]

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    def write(self, dataset_indices: torch.Tensor, embeddings: torch.Tensor, epoch: int = 0) -> None:
        """Store ``embeddings: Tensor[B, d]`` (detached) as the rows ``dataset_indices: LongTensor[B]``.

        An index repeated within the batch keeps its last row. ``epoch`` (>= 0) is recorded per row.
        """
        idx = self._check_indices(dataset_indices, "dataset_indices")
        check_embeddings(embeddings, "embeddings", allow_empty=True)
        if embeddings.shape != (idx.shape[0], self.dim):
            raise ValueError(f"embeddings must have shape [{idx.shape[0]}, {self.dim}] (one row of the bank's "
                             f"dimension per dataset index), got {tuple(embeddings.shape)}")
        epoch = check_int(epoch, "epoch", 0)
        rows = embeddings.detach().to(device="cpu", dtype=torch.float32)
        # The last copy of a repeated index wins: first copies of the reversed batch.
        last = idx.shape[0] - 1 - first_copies(idx.flip(0))
        idx, rows = idx[last], rows[last]
        self.embeddings[idx] = rows
        self.filled[idx] = True
        self.written_epoch[idx] = epoch
        self.written_step[idx] = self.num_writes
        self.num_writes += 1

    def _check_indices(self, indices, name: str) -> torch.Tensor:
        if not torch.is_tensor(indices) or indices.dim() != 1 or indices.is_floating_point() \
                or indices.dtype == torch.bool:
            raise TypeError(f"{name} must be a 1-D integer tensor")
        indices = indices.detach().long().cpu()
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.num_rows):
            raise ValueError(f"{name} must lie in [0, {self.num_rows}) (rows of the bank), got values in "
                             f"[{int(indices.min())}, {int(indices.max())}]")
        return indices

    def copy(self) -> "EmbeddingBank":
        """An independent bank with the same rows, flags and stamps."""
        out = EmbeddingBank(self.num_rows, self.dim)
        out.load_state_dict(self.state_dict())
        return out

    # ------------------------------------------------------------------ ranks
    def gathered(self) -> "EmbeddingBank":
        """The bank of all ranks together, identical on every rank (a copy of this bank when not
        distributed); each rank wrote the rows of its own batches.

        A row written by several ranks keeps the latest write: the latest ``written_epoch``,
        then the latest ``written_step`` (every rank writes once per training step, so within
        an epoch the counts agree), then the lowest rank's.
        Collective: every rank must call it.
        """
        if not is_distributed():
            return self.copy()
        rows = self.filled.nonzero().flatten()
        idx, step = all_gather_uneven(rows), all_gather_uneven(self.written_step[rows])
        embeddings, epoch = all_gather_uneven(self.embeddings[rows]), all_gather_uneven(self.written_epoch[rows])
        num_writes = all_gather_uneven(torch.tensor([self.num_writes]))
        # Newest first: by epoch, then by step within it (ranks may have run uneven step counts).
        by_step = torch.argsort(-step, stable=True)
        newest_first = by_step[torch.argsort(-epoch[by_step], stable=True)]
        keep = newest_first[first_copies(idx[newest_first])]
        out = EmbeddingBank(self.num_rows, self.dim)
        out.embeddings[idx[keep]] = embeddings[keep]
        out.filled[idx[keep]] = True
        out.written_epoch[idx[keep]], out.written_step[idx[keep]] = epoch[keep], step[keep]
        out.num_writes = int(num_writes.max())
        return out

    # ------------------------------------------------------------------ staleness
    def staleness(self, rows: torch.Tensor, fresh: torch.Tensor, k: int = 10) -> dict[str, float]:
        """How far the bank lags behind the current model, on a sample of rows.

        Args:
            rows: ``LongTensor[Q]`` distinct written rows (``Q >= 2``).
            fresh: ``Tensor[Q, d]``, those samples embedded by the current model.
            k: neighbours per point of the two k-NN graphs (clamped to ``Q - 1``).

        Returns:
            ``mean_distance``: mean Euclidean distance between a bank row and its fresh
            embedding; ``recall``: recall@k of the sample's exact k-NN graph in the bank
            against the one in the fresh embeddings (1.0: the bank finds the same neighbours).
        """
        rows = self._check_indices(rows, "rows")
        check_embeddings(fresh, "fresh")
        if fresh.shape != (rows.shape[0], self.dim):
            raise ValueError(f"fresh must have shape [{rows.shape[0]}, {self.dim}] (one row per entry of rows), "
                             f"got {tuple(fresh.shape)}")
        if rows.shape[0] < 2 or torch.unique(rows).numel() != rows.shape[0]:
            raise ValueError("rows must hold at least 2 distinct dataset indices")
        if not bool(self.filled[rows].all()):
            raise ValueError("rows must be written rows of the bank (filled[rows] holds False)")
        k = min(check_int(k, "k", 1), rows.shape[0] - 1)
        fresh = fresh.detach().to(device="cpu", dtype=torch.float32)
        old = self.embeddings[rows]
        graphs = [_knn_within(points, k) for points in (fresh, old)]
        # The bank's neighbours are scored at their fresh distances, as a search would meet them.
        fresh_d = torch.cdist(fresh, fresh)
        approx_d = fresh_d.gather(1, graphs[1])
        quality = ann_quality(fresh_d.gather(1, graphs[0]), graphs[0], approx_d, graphs[1])
        return {"mean_distance": float((old - fresh).norm(dim=1).mean()), "recall": float(quality["recall"])}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """The rows, their flags and write stamps, and the write count (CPU tensors)."""
        return {"version": 1, "embeddings": self.embeddings.clone(), "filled": self.filled.clone(),
                "written_epoch": self.written_epoch.clone(), "written_step": self.written_step.clone(),
                "num_writes": self.num_writes}

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict()`` of a bank of the same shape; everything is checked before anything changes."""
        check_state_version(state, "EmbeddingBank", required=True)
        missing = [key for key in _STATE_KEYS if key not in state]
        if missing:
            raise ValueError(f"state is missing {missing} (an EmbeddingBank.state_dict())")
        n, d = self.num_rows, self.dim
        emb, filled, epoch, step = (state[key] for key in _STATE_KEYS[:4])
        if not torch.is_tensor(emb) or tuple(emb.shape) != (n, d) or not emb.is_floating_point():
            got = tuple(emb.shape) if torch.is_tensor(emb) else type(emb).__name__
            raise ValueError(f"state['embeddings'] must be a float Tensor[{n}, {d}] (this bank's shape), got {got}")
        check_embeddings(emb, "state['embeddings']")
        if not torch.is_tensor(filled) or filled.dtype != torch.bool or tuple(filled.shape) != (n,):
            raise ValueError(f"state['filled'] must be a BoolTensor[{n}]")
        for key, value, low in (("written_epoch", epoch, 0), ("written_step", step, -1)):
            if not torch.is_tensor(value) or tuple(value.shape) != (n,) or value.is_floating_point() \
                    or value.dtype == torch.bool or (n and int(value.min()) < low):
                raise ValueError(f"state['{key}'] must be an integer Tensor[{n}] of values >= {low}")
        if not torch.equal(step >= 0, filled):
            raise ValueError("state['written_step'] must be >= 0 exactly on the rows state['filled'] marks")
        num_writes = check_int(state["num_writes"], "state['num_writes']", int(step.max()) + 1)
        self.embeddings = emb.detach().to(device="cpu", dtype=torch.float32).clone()
        self.filled = filled.cpu().clone()
        self.written_epoch, self.written_step = epoch.long().cpu().clone(), step.long().cpu().clone()
        self.num_writes = num_writes


def _knn_within(points: torch.Tensor, k: int) -> torch.Tensor:
    """The exact ``k`` nearest other points of every point of ``points: Tensor[Q, d]``: ``LongTensor[Q, k]``."""
    raw, found = brute_force_raw(points, (points ** 2).sum(1), points, k + 1, inner_product=False)
    return drop_self(raw, found, torch.arange(points.shape[0]))[1]
