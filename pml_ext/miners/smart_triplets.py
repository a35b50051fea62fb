"""Smart mining's triplet selection (Harwood et al., ICCV 2017, eq. 6 and Algorithm 1), vectorised.

Algorithm 1 walks each anchor's sorted neighbour list once. Every step of the walk is
a pure function of (the neighbour's position, its label, its distance, the position of
the first positive), so the walk of all N anchors is a handful of element-wise and
cumulative operations over the ``[N, k]`` neighbour matrix:

=========================================================  =====================================
Algorithm 1 (per anchor, walking the ascending list)       tensor code (all anchors at once)
=========================================================  =====================================
labels of the neighbours                                   ``same = ref_labels[nbr] == labels[:, None]``
skip everything before the first positive                  ``first = argmax(same)`` (first True),
                                                           ``after = col > first``
first positive: ``bound = kappa * d(first positive)``,     ``bound = kappa * dist[row, first]``;
recorded with an empty set of valid negatives              it is never a triplet's positive
skip later neighbours with ``d < bound`` (eq. 6 is         ``live = after & (dist > bound)``
strict: a negative needs ``d > bound``)
negative beyond the bound -> appended to ``neg``           ``valid_neg = live & ~same``
positive beyond the bound -> appended to ``pos`` with a    ``valid_pos = live & same``; its copy of
copy of ``neg`` (the valid negatives before it)            ``neg`` = the valid negatives in
                                                           earlier columns
``n = neg[0]``, paired with the first positive whose       the first positive *after* n's column:
valid set contains n                                       ``next_pos`` = reverse ``cummin`` of
                                                           ``where(valid_pos, col, k)``
none -> a positive drawn at random outside the list        ``next_pos == k`` -> uniform draw over
                                                           the anchor's class minus the listed
                                                           positives (and the anchor)
remove n; repeat until ``neg`` is empty                    every ``valid_neg`` entry emits one
                                                           triplet, in column order (``nonzero``)
``neg`` empty from the start -> a random triplet           rows with no ``valid_neg``: uniform
                                                           positive and negative of the anchor
=========================================================  =====================================

Popping ``neg[0]`` until ``neg`` is empty visits every valid negative exactly once, and
the positive chosen for a negative does not depend on which negatives were popped
before it (the copies of ``neg`` are taken while walking), so the order of the pops
does not change the triplets: the per-anchor loop and the matrix form agree exactly.

Two cases Algorithm 1 does not cover, **ours**: a negative that needs a positive from
outside the list when the anchor's class has none left (every positive is listed), and
an anchor that needs a random triplet when its class has no other member or there is
no other class. Both emit nothing and are counted in ``num_dropped``.
"""
from __future__ import annotations

import torch

from ..utils.checks import check_finite, check_labels, check_positive
from ..utils.classes import Classes, group_by_class

__all__ = ["smart_triplets", "random_triplets"]

# Gathered elements per chunk when drawing outside-the-list positives (~32 MB of int64).
_CHUNK_ELEMENTS = 4_000_000


# One group-by-class helper for the package (a stable sort, ~50x faster than torch.unique on CPU).
_Classes, _group_by_class = Classes, group_by_class


def _class_ids(classes: _Classes, labels: torch.Tensor) -> torch.Tensor:
    """Class id of each label in ``classes``, -1 for a label the reference set lacks."""
    if classes.values.numel() == 0:
        return torch.full_like(labels, -1)
    pos = torch.searchsorted(classes.values, labels).clamp_max(classes.values.numel() - 1)
    return torch.where(classes.values[pos] == labels, pos, torch.full_like(pos, -1))


def _uniform_below(upper: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One uniform integer in ``[0, upper[t])`` per entry (``upper >= 1``): ``LongTensor[T]``."""
    gen_device = generator.device if generator is not None else upper.device
    u = torch.rand(upper.shape[0], generator=generator, dtype=torch.float64, device=gen_device)
    return torch.minimum((u.to(upper.device) * upper).long(), upper - 1)


def _skip_excluded(r: torch.Tensor, excluded: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The ``r[t]``-th integer not in ``excluded[rows[t]]`` (each row sorted ascending).

    With ``e_0 < e_1 < ...`` excluded, ``e_i - i`` counts the allowed integers below
    ``e_i``, so the answer is ``r + #{i : e_i - i <= r}``: one batched ``searchsorted``,
    in chunks so the gathered ``[T, E]`` rows stay small.
    """
    allowed_below = excluded - torch.arange(excluded.shape[1], device=excluded.device)
    out = torch.empty_like(r)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, excluded.shape[1]))
    for start in range(0, r.shape[0], chunk):
        rc = r[start:start + chunk]
        skips = torch.searchsorted(allowed_below[rows[start:start + chunk]], rc.unsqueeze(1), right=True)
        out[start:start + chunk] = rc + skips.squeeze(1)
    return out


def _random_from_classes(anchors: torch.Tensor, anchor_cls: torch.Tensor, anchor_rank: torch.Tensor | None,
                         classes: _Classes, generator: torch.Generator | None):
    """A uniform positive and negative for each anchor; anchors with none are left out.

    ``anchor_rank`` is the anchor's rank within its class when the anchor is itself a
    reference sample (it is then excluded from its positives), else ``None``.
    Returns ``(anchors, positives, negatives, num_left_out)``.
    """
    num_ref = classes.order.shape[0]
    count = torch.where(anchor_cls >= 0, classes.count[anchor_cls.clamp_min(0)], torch.zeros_like(anchor_cls))
    num_pos = count - (1 if anchor_rank is not None else 0)
    ok = (num_pos > 0) & (num_ref - count > 0)
    anchors, cls, count, num_pos = anchors[ok], anchor_cls[ok], count[ok], num_pos[ok]
    pos_rank = _uniform_below(num_pos, generator)
    if anchor_rank is not None:
        pos_rank = pos_rank + (pos_rank >= anchor_rank[ok]).long()
    positives = classes.order[classes.start[cls] + pos_rank]
    # The non-members of a class are the two runs of `order` around the class's own run.
    neg_slot = _uniform_below(num_ref - count, generator)
    neg_slot = neg_slot + count * (neg_slot >= classes.start[cls]).long()
    negatives = classes.order[neg_slot]
    return anchors, positives, negatives, int((~ok).sum())


def random_triplets(anchors: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None):
    """One uniformly random triplet per anchor, within one labelled set.

    Args:
        anchors: ``LongTensor[A]``, indices into ``labels`` (repeats allowed).
        labels: ``LongTensor[N]``.
        generator: the only source of randomness (global RNG when ``None``).

    Returns:
        ``(anchors, positives, negatives)``, ``LongTensor[A']`` each: the positive is a
        uniform other member of the anchor's class, the negative a uniform sample of
        another class. Anchors whose class has no other member, or with no other class,
        are left out (``A' <= A``).
    """
    check_labels(labels, labels.shape[0] if torch.is_tensor(labels) else 0)
    classes = _group_by_class(labels)
    anchors = anchors.long()
    a, p, n, _ = _random_from_classes(anchors, classes.of[anchors], classes.rank[anchors], classes, generator)
    return a, p, n


def _check_neighbor_lists(neighbor_indices, neighbor_distances, labels, ref_labels, kappa) -> int:
    """Validate the inputs of ``smart_triplets``; returns the reference set size M."""
    if not torch.is_tensor(neighbor_indices):
        raise TypeError(f"neighbor_indices must be a torch.Tensor, got {type(neighbor_indices).__name__}")
    if neighbor_indices.dim() != 2:
        raise ValueError(f"neighbor_indices must be 2-D [N, k], got shape {tuple(neighbor_indices.shape)}")
    if neighbor_indices.is_floating_point() or neighbor_indices.is_complex() or neighbor_indices.dtype == torch.bool:
        raise TypeError(f"neighbor_indices must have an integer dtype, got {neighbor_indices.dtype}")
    if not torch.is_tensor(neighbor_distances):
        raise TypeError(f"neighbor_distances must be a torch.Tensor, got {type(neighbor_distances).__name__}")
    if neighbor_distances.shape != neighbor_indices.shape:
        raise ValueError(f"neighbor_distances must have the shape of neighbor_indices {tuple(neighbor_indices.shape)}, "
                         f"got {tuple(neighbor_distances.shape)}")
    if not neighbor_distances.is_floating_point():
        raise TypeError(f"neighbor_distances must have a floating-point dtype, got {neighbor_distances.dtype}")
    check_positive(kappa, "kappa")
    check_labels(labels, neighbor_indices.shape[0], embeddings_name="neighbor_indices")
    if ref_labels is not None:
        check_labels(ref_labels, ref_labels.shape[0] if torch.is_tensor(ref_labels) else 0, name="ref_labels")
    num_ref = labels.shape[0] if ref_labels is None else ref_labels.shape[0]
    check_finite(neighbor_distances, "neighbor_distances")
    if neighbor_indices.numel() == 0:
        return num_ref
    if int(neighbor_indices.min()) < 0 or int(neighbor_indices.max()) >= num_ref:
        raise ValueError(f"neighbor_indices must lie in [0, {num_ref}) (FAISS pads missing neighbours with -1), "
                         f"got values in [{int(neighbor_indices.min())}, {int(neighbor_indices.max())}]")
    if bool((neighbor_distances[:, 1:] < neighbor_distances[:, :-1]).any()):
        raise ValueError("neighbor_distances must be sorted ascending along each row (nearest first)")
    # int32 sorts ~25 % faster than int64 and every index fits (checked above).
    narrow = neighbor_indices.int() if num_ref < 2**31 else neighbor_indices
    sorted_idx = torch.sort(narrow, dim=1).values
    if bool((sorted_idx[:, 1:] == sorted_idx[:, :-1]).any()):
        raise ValueError("neighbor_indices must not list the same neighbour twice in a row")
    if ref_labels is None:
        own = torch.arange(neighbor_indices.shape[0], device=neighbor_indices.device).unsqueeze(1)
        if bool((neighbor_indices == own).any()):
            raise ValueError("neighbor_indices must exclude the anchor itself (row i lists i)")
    return num_ref


def smart_triplets(neighbor_indices: torch.Tensor, neighbor_distances: torch.Tensor, labels: torch.Tensor,
                   kappa: float, generator: torch.Generator | None = None, *,
                   ref_labels: torch.Tensor | None = None, return_stats: bool = False,
                   return_mined_mask: bool = False):
    """The epoch's triplets by smart mining's Algorithm 1 (docs/smart_mining.md).

    Args:
        neighbor_indices: ``LongTensor[N, k]``, each anchor's k nearest neighbours,
            nearest first, the anchor itself excluded.
        neighbor_distances: ``Tensor[N, k]``, the matching **squared** Euclidean
            distances, ascending (``pml_ext.utils.squared_euclidean.squared_euclidean``
            converts any supported PML distance).
        labels: ``LongTensor[N]``, the anchors' labels.
        kappa: eq. 6's multiplier (> 0). A negative qualifies only if its squared
            distance exceeds ``kappa`` times that of the anchor's nearest listed positive.
        generator: the only source of randomness (outside-the-list positives and
            random triplets); the same generator state gives the same output.
        ref_labels: ``LongTensor[M]`` when the neighbours index a separate reference
            set (the anchors are then not reference samples); default: the anchors'
            own set, ``M = N``.
        return_stats: also return a dict of counts (below).
        return_mined_mask: also return ``is_mined``, ``BoolTensor[T]``: True for the
            triplets Algorithm 1 really mined (a valid negative beyond the kappa bound,
            paired with a listed or an outside-the-list positive), False for its random
            fallback triplets (anchors whose ``neg`` list is empty).

    Returns:
        ``(anchors, positives, negatives)``, ``LongTensor[T]`` each, anchors ascending and,
        per anchor, negatives in list order; then ``is_mined`` if ``return_mined_mask``;
        then, if ``return_stats``, a dict::

            {"num_mined": mined triplets (listed or outside-list positive) = is_mined.sum(),
             "num_outside_positive": those whose positive was drawn outside the list,
             "num_random": random triplets of anchors without a valid negative,
             "num_dropped": negatives/anchors that could get no triplet (see module doc),
             "is_random": BoolTensor[T], "is_mined": BoolTensor[T] (= ~is_random)}

        The default three-tuple and ``return_stats`` four-tuple are unchanged.

    Every mined triplet has ``d(a,n) > kappa * d(a,p_nn)`` and ``d(a,n) <= d(a,p)``
    (strict when the distances are distinct; for a positive drawn outside the list this
    needs the lists to be the exact k nearest), and uses each negative at most once.
    """
    num_ref = _check_neighbor_lists(neighbor_indices, neighbor_distances, labels, ref_labels, kappa)
    nbr, dist = neighbor_indices.long(), neighbor_distances
    labels = labels.long()
    num_anchors, k = nbr.shape
    device = nbr.device
    same_set = ref_labels is None
    ref = labels if same_set else ref_labels.long().to(device)
    classes = _group_by_class(ref)
    anchor_cls = classes.of if same_set else _class_ids(classes, labels)
    anchor_count = torch.where(anchor_cls >= 0, classes.count[anchor_cls.clamp_min(0)], torch.zeros_like(anchor_cls))

    same = ref[nbr] == labels.unsqueeze(1)                                   # [N, k]
    cols = torch.arange(k, device=device)
    if k > 0:
        has_pos = same.any(dim=1)
        first = same.int().argmax(dim=1)                                       # first positive's column
        bound = float(kappa) * dist.gather(1, first.unsqueeze(1))
        live = (cols > first.unsqueeze(1)) & (dist > bound) & has_pos.unsqueeze(1)
    else:
        live = same
    valid_neg, valid_pos = live & ~same, live & same
    pos_col = torch.where(valid_pos, cols, torch.full_like(cols, k))
    next_pos = pos_col.flip(1).cummin(dim=1).values.flip(1) if k > 0 else pos_col

    # Row-major order of the flat mask = per anchor, the negatives in list order. One
    # nonzero, then 1-D index_select: 2-D or boolean indexing is several times slower here.
    flat = valid_neg.reshape(-1).nonzero().squeeze(1)
    rows = torch.div(flat, max(k, 1), rounding_mode="floor")
    negatives = nbr.reshape(-1).index_select(0, flat)
    pair_col = next_pos.reshape(-1).index_select(0, flat)
    listed = pair_col < k
    positives = nbr.reshape(-1).index_select(0, rows * k + pair_col.clamp_max(max(k - 1, 0)))
    num_dropped, keep = 0, None

    need = (~listed).nonzero().flatten()
    if need.numel() > 0:
        # Outside-the-list positives: the class minus its listed members (and the anchor).
        # `rows` is sorted, so consecutive runs are the anchors.
        uniq_a, inv = torch.unique_consecutive(rows[need], return_inverse=True)
        same_u, nbr_u = same[uniq_a], nbr[uniq_a]
        excluded = torch.where(same_u, classes.rank[nbr_u], torch.full_like(nbr_u, num_ref))
        if same_set:
            excluded = torch.cat([excluded, classes.rank[uniq_a].unsqueeze(1)], dim=1)
        num_excluded = same_u.sum(dim=1) + int(same_set)
        # Sorting puts the padding last; columns past the longest exclusion list are padding only.
        excluded = excluded.sort(dim=1).values[:, : int(num_excluded.max())]
        avail = anchor_count[uniq_a] - num_excluded
        ok = avail[inv] > 0
        if not bool(ok.all()):
            keep = torch.ones_like(listed)
            keep[need[~ok]] = False
            num_dropped += int((~ok).sum())
            need, inv = need[ok], inv[ok]
        rank = _skip_excluded(_uniform_below(avail[inv], generator), excluded, inv)
        positives[need] = classes.order[classes.start[anchor_cls[uniq_a[inv]]] + rank]
        if keep is not None:
            rows, negatives, positives, listed = rows[keep], negatives[keep], positives[keep], listed[keep]
    num_mined, num_outside = rows.numel(), int((~listed).sum())

    # Anchors whose `neg` is empty from the start get one random triplet each.
    empty = (~valid_neg.any(dim=1)).nonzero().flatten() if k > 0 else torch.arange(num_anchors, device=device)
    ra, rp, rn, left_out = _random_from_classes(
        empty, anchor_cls[empty], classes.rank[empty] if same_set else None, classes, generator)
    num_dropped += left_out

    # Merge the two anchor-sorted lists (an anchor is in at most one of them) by position.
    slot_mined = torch.arange(rows.numel(), device=device) + torch.searchsorted(ra, rows)
    slot_random = torch.arange(ra.numel(), device=device) + torch.searchsorted(rows, ra)
    total = rows.numel() + ra.numel()
    triplets = tuple(torch.empty(total, dtype=torch.long, device=device).index_put_((slot_mined,), mined)
                     .index_put_((slot_random,), rand) for mined, rand in ((rows, ra), (positives, rp), (negatives, rn)))
    is_mined = torch.zeros(total, dtype=torch.bool, device=device)
    is_mined[slot_mined] = True
    extra = (is_mined,) if return_mined_mask else ()
    if not return_stats:
        return (*triplets, *extra)
    stats = {"num_mined": num_mined, "num_outside_positive": num_outside, "num_random": int(ra.numel()),
             "num_dropped": num_dropped, "is_random": ~is_mined, "is_mined": is_mined}
    return (*triplets, *extra, stats)
