"""IsometricHardMiner: batch-hard mining that measures its own Hausdorff-like objective
and steers away from network collapse (Xu et al., docs/isometric_mining.md).

See docs/isometric_mining.md for the rule, its thresholds and the experiments behind them.
"""
from __future__ import annotations

import torch

from ..utils._isometry import dissimilarity, embedding_scale, hardest_pairs, oriented, violations
from ..utils.checked_modules import CheckedMiner
from ..utils.checks import check_int, check_positive, check_state_version

__all__ = ["IsometricHardMiner"]


class IsometricHardMiner(CheckedMiner):
    """Batch-hard mining while it beats the collapsed solution; semi-hard mining otherwise.

    **Measured on every batch** (recordable statistics, plain Python floats, computed even
    with ``collect_stats=False`` because the rule needs them), with
    ``v_a = [max_p D(a,p) - min_n D(a,n) + margin]_+`` over the anchors that have a
    positive and a negative:

    - ``d_iso_max = max_a v_a``: the sup-norm (Hausdorff-like) distance of Xu et al.
      between the network and the triplet-separated functions, estimated on the batch;
    - ``d_iso_mean = mean_a v_a``;
    - ``spread``: the mean distance over negative pairs, in margins (``inf`` if margin 0);
    - ``relative_spread``: the same mean over the embedding scale ``(2 * mean ||x||)^power``,
      in [0, 1] for an Lp distance with ``power=1`` and unchanged by rescaling the embeddings;
    - ``collapse_detected``: 1.0 when ``relative_spread < collapse_threshold`` or
      ``spread < 0.5`` (the batch has collapsed towards a point), else 0.0;
    - ``semi_hard_mode``: 1.0 when this batch was mined semi-hard (see the rule), else 0.0;
    - ``candidate_negatives``: the mean size of an anchor's candidate-negative pool.

    **Rule.** The constant map ``f(x) = c`` has ``v_a = margin`` for every anchor. Hard
    triplets are mined only when the batch does better than that,
    ``d_iso_mean < iso_threshold * margin``, and has not collapsed. Otherwise the miner
    steers away: ``semi_hard_mode`` is set. The rule looks at the current batch only (no
    state), so it is the same on every rank that sees the same batch.

    **Mining.** Hard: for every anchor with a positive and a negative, its farthest positive
    and its closest negative, exactly ``BatchHardMiner``'s triplets. Semi-hard:
    ``triplets_per_anchor`` triplets per anchor, each with a uniformly drawn positive ``p``
    and a uniformly drawn semi-hard negative ``n``, ``D(a,p) < D(a,n) < D(a,p) + margin``
    (FaceNet's remedy for the collapsed model), found by rejection sampling among
    ``semi_hard_draws`` uniform draws per anchor (shared by its positives); a pair whose
    draws hold no semi-hard negative gives no triplet. Similarities (``CosineSimilarity``...) are handled with the inequalities reversed.

    ``max_negatives`` is a plain attribute, re-read on every call, so a controller may set
    it between iterations. It caps each anchor's candidate negatives to a uniform draw of
    that size, in both modes. That is hard mining over a smaller effective batch, the
    quantity Xu et al. link to collapse. ``None`` means all negatives.

    Args:
        margin: the triplet margin (>= 0), the same as the loss's.
        max_negatives: candidate-pool cap per anchor (>= 1; floats are rounded) or ``None``.
        collapse_threshold: ``relative_spread`` below which the batch counts as collapsed.
        iso_threshold: hard mining needs ``d_iso_mean < iso_threshold * margin``.
        triplets_per_anchor: semi-hard triplets per anchor. The default, 16, is ours (4 before):
            with 4, P@1 fell below PML's semi-hard miner (which keeps every semi-hard triplet)
            in 3 of the 9 cells of the collapse sweep (docs/isometric_mining.md).
        semi_hard_draws: rejection-sampling draws per anchor, shared by its positives.
        seed: seeds the sampling; the same seed and inputs give the same triplets.
        **kwargs: passed to PML's ``BaseMiner`` (``distance=``, ``collect_stats=``).

    ``forward(embeddings [B, d], labels [B], ref_emb [R, d] = None, ref_labels [R] = None)``
    returns ``(a, p, n)``, ``LongTensor[T]`` each: ``a`` indexes ``embeddings``, ``p`` and
    ``n`` index ``ref_emb`` (the batch itself when no reference is given).
    """

    def __init__(self, margin: float = 0.2, max_negatives: int | None = None,
                 collapse_threshold: float = 0.25, iso_threshold: float = 1.0,
                 triplets_per_anchor: int = 16, semi_hard_draws: int = 64, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        check_positive(margin, "margin", allow_zero=True)
        check_positive(collapse_threshold, "collapse_threshold")
        check_positive(iso_threshold, "iso_threshold")
        triplets_per_anchor = check_int(triplets_per_anchor, "triplets_per_anchor", 1)
        semi_hard_draws = check_int(semi_hard_draws, "semi_hard_draws", 1)
        seed = check_int(seed, "seed")
        self._pool_size(max_negatives)
        self.margin = float(margin)
        self.max_negatives = max_negatives
        self.collapse_threshold = float(collapse_threshold)
        self.triplets_per_anchor = triplets_per_anchor
        self.iso_threshold = float(iso_threshold)
        self.semi_hard_draws = semi_hard_draws
        self.seed = seed
        self._generators: dict[str, torch.Generator] = {}
        self.add_to_recordable_attributes(
            list_of_names=["margin", "collapse_threshold", "iso_threshold", "triplets_per_anchor"], is_stat=False
        )
        # The statistics drive the mining rule, so they exist even with collect_stats=False.
        self._stat_names = ["d_iso_max", "d_iso_mean", "spread", "relative_spread", "collapse_detected",
                            "semi_hard_mode", "candidate_negatives"]
        for name in self._stat_names:
            setattr(self, name, 0.0)
        self.add_to_recordable_attributes(list_of_names=self._stat_names, is_stat=True)

    def reset_generator(self) -> None:
        """Restart the sampling from ``seed``."""
        self._generators.clear()

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor,
             ref_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``embeddings [B, d]``, ``labels [B]``, ``ref_emb [R, d]``, ``ref_labels [R]`` ->
        ``(a, p, n)``, ``LongTensor[T]`` each (called by ``forward`` under ``no_grad``)."""
        if embeddings.shape[0] == 0 or ref_emb.shape[0] == 0:
            for name in self._stat_names:
                setattr(self, name, 0.0)
            empty = torch.empty(0, dtype=torch.long, device=embeddings.device)
            return empty, empty, empty
        mat = self.distance(embeddings, ref_emb)
        dm = oriented(mat, self.distance)
        pos = labels[:, None] == ref_labels[None, :]
        neg = ~pos
        if ref_labels is labels:
            # PML's convention: the batch is its own reference, so a sample is not its own positive.
            pos.fill_diagonal_(False)
        pos_val, pos_idx, neg_val, neg_idx = hardest_pairs(dm, pos, neg)
        num_neg = neg.sum(dim=1)
        valid = pos.any(dim=1) & (num_neg > 0)
        steer = self._measure(mat, pos_val, neg_val, valid, neg, num_neg, embeddings, ref_emb)
        self.semi_hard_mode = float(steer)

        cap = self._pool_size(self.max_negatives)
        empty = torch.empty(0, dtype=torch.long, device=dm.device)
        if not bool(valid.any()):
            self.candidate_negatives = 0.0
            return empty, empty, empty
        anchors = torch.nonzero(valid).squeeze(1)
        num_neg = num_neg[anchors]
        self.candidate_negatives = float((num_neg if cap is None else num_neg.clamp(max=cap)).float().mean())
        pool = None
        if cap is not None and cap < int(num_neg.max()):
            pool = self._negative_pool(neg, cap)
        if steer:
            return self._semi_hard(dm, pos, neg, anchors, pool)
        if pool is not None:
            pool_d = dm.gather(1, pool).masked_fill(~neg.gather(1, pool), float("inf"))
            neg_idx = pool.gather(1, pool_d.argmin(dim=1, keepdim=True)).squeeze(1)
        return anchors, pos_idx[anchors], neg_idx[anchors]

    def _measure(self, mat, pos_val, neg_val, valid, neg, num_neg, embeddings, ref_emb) -> bool:
        """Set the statistics; return whether to steer away from hard mining."""
        if bool(valid.any()):
            v = violations(pos_val[valid], neg_val[valid], self.margin)
            self.d_iso_max, self.d_iso_mean = float(v.max()), float(v.mean())
        else:
            self.d_iso_max = self.d_iso_mean = 0.0
        total_neg = int(num_neg.sum())
        if total_neg == 0:
            # No negative pair: nothing to mine and no evidence of collapse.
            self.spread = self.relative_spread = self.collapse_detected = 0.0
            return False
        diss = dissimilarity(mat, embeddings, ref_emb, self.distance)
        mean_neg = float(diss.masked_fill(~neg, 0).sum()) / total_neg
        scale = float(embedding_scale(ref_emb, self.distance))
        self.spread = mean_neg / self.margin if self.margin > 0 else float("inf")
        self.relative_spread = mean_neg / scale if scale > 0 else 0.0
        collapsed = self.relative_spread < self.collapse_threshold or self.spread < 0.5
        self.collapse_detected = float(collapsed)
        # The constant map f(x) = c has v_a = margin for every anchor. While the batch's
        # estimate is no better than that, the hardest triplets pull towards the constant map.
        no_better_than_constant = self.margin > 0 and self.d_iso_mean >= self.iso_threshold * self.margin
        return collapsed or no_better_than_constant

    def _semi_hard(self, dm, pos, neg, anchors, pool):
        """``triplets_per_anchor`` (uniform positive, uniform semi-hard negative) per anchor.

        The negative is found by rejection sampling: ``semi_hard_draws`` uniform draws from
        the anchor's candidate negatives, the first that is semi-hard for the pair is kept;
        an accepted draw is uniform over the pair's semi-hard set. The draws are shared by
        the anchor's positives (one sampling call per anchor, not per pair), so two triplets
        of one anchor may share a negative.
        """
        t, r = self.triplets_per_anchor, self.semi_hard_draws
        gen = self._generator(dm.device)
        rows = anchors[:, None]
        cand = neg[anchors]
        if pool is not None:
            cand = torch.zeros_like(cand).scatter_(1, pool[anchors], True) & cand
        p = torch.multinomial(pos[anchors].float(), t, replacement=True, generator=gen)  # [A, t]
        draws = torch.multinomial(cand.float(), r, replacement=True, generator=gen)  # [A, r]
        d_ap = dm[rows, p].unsqueeze(2)  # [A, t, 1]
        d_an = dm[rows, draws].unsqueeze(1)  # [A, 1, r]
        semi_hard = (d_an > d_ap) & (d_an < d_ap + self.margin)  # [A, t, r]
        # One pass: max over dim returns the first maximal index, i.e. the first hit.
        hit, first = semi_hard.to(torch.uint8).max(dim=2)
        n = draws.gather(1, first)
        ok = hit.bool().reshape(-1)
        a = anchors[:, None].expand(-1, t).reshape(-1)
        return a[ok], p.reshape(-1)[ok], n.reshape(-1)[ok]

    def _negative_pool(self, neg: torch.Tensor, cap: int) -> torch.Tensor:
        """``[M, cap]`` column indices: a uniform draw of ``cap`` negatives per row.

        Rows with fewer negatives also get non-negative columns; callers re-mask with ``neg``.
        """
        keys = torch.rand(neg.shape, generator=self._generator(neg.device), device=neg.device)
        keys = keys.masked_fill(~neg, 2.0)  # every negative's key (< 1) sorts before any non-negative
        return keys.topk(cap, dim=1, largest=False).indices

    def get_extra_state(self) -> dict:
        """``state_dict()``'s ``_extra_state``: the sampling generators, so a resumed run draws on."""
        return {"version": 1, "generators": {key: gen.get_state() for key, gen in self._generators.items()}}

    def set_extra_state(self, state: dict) -> None:
        check_state_version(state, "IsometricHardMiner")
        if not isinstance(state, dict) or not isinstance(state.get("generators"), dict):
            raise ValueError("state must hold 'generators' (an IsometricHardMiner.state_dict())")
        for key, gen_state in state["generators"].items():
            self._generator(torch.device(key)).set_state(gen_state)

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[key]

    @staticmethod
    def _pool_size(max_negatives) -> int | None:
        if max_negatives is None:
            return None
        if isinstance(max_negatives, bool):
            raise TypeError("max_negatives must be an int >= 1 or None, got bool")
        try:
            value = float(max_negatives)
        except (TypeError, ValueError):
            raise TypeError(f"max_negatives must be an int >= 1 or None, got {type(max_negatives).__name__}") from None
        if not value >= 1 or value == float("inf"):
            raise ValueError(f"max_negatives must be >= 1 or None, got {max_negatives}")
        # A controller may write a float: round it to the nearest pool size.
        return int(round(value))

