"""pml_ext.LiftedStructureLoss against the paper's formula (a Python loop) and PML's own class."""
import math
import zlib

import pytest
import torch
from pytorch_metric_learning import distances, losses, miners, reducers, regularizers

import pml_ext
from pml_ext import LiftedStructureLoss


def make_batch(batch_size=24, dim=8, num_classes=4, dtype=torch.float64, seed=0, scale=1.0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    emb = (torch.randn(batch_size, dim, generator=g, dtype=dtype) * scale).to(device).requires_grad_()
    labels = torch.randint(0, num_classes, (batch_size,), generator=g).to(device)
    return emb, labels


def paper_loss(emb, labels, alpha=1.0):
    """Song et al. eq. (4) written as loops: J = 1/(2|P|) sum_{(i,j) in P} max(0, J_ij)^2."""
    x = emb.detach().tolist()
    lab = labels.tolist()
    B = len(lab)

    def dist(i, j):
        return math.sqrt(sum((a - b) ** 2 for a, b in zip(x[i], x[j])))

    total, num_pos = 0.0, 0
    for i in range(B):
        for j in range(B):
            if i == j or lab[i] != lab[j]:
                continue
            num_pos += 1
            s = sum(math.exp(alpha - dist(i, k)) for k in range(B) if lab[k] != lab[i])
            s += sum(math.exp(alpha - dist(j, l)) for l in range(B) if lab[l] != lab[j])
            j_ij = math.log(s) + dist(i, j)
            total += max(0.0, j_ij) ** 2
    return total / (2 * num_pos)


@pytest.mark.parametrize("seed,num_classes,alpha", [(0, 4, 1.0), (1, 2, 0.5), (2, 6, 2.0), (3, 3, 1.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_paper_formula(seed, num_classes, alpha, dtype, device):
    emb, labels = make_batch(20, 5, num_classes, dtype=dtype, seed=seed, device=device)
    loss = LiftedStructureLoss(neg_margin=alpha, distance=distances.LpDistance(normalize_embeddings=False))
    expected = paper_loss(emb, labels, alpha)
    rtol = 1e-5 if dtype == torch.float32 else 1e-10
    assert loss(emb, labels).item() == pytest.approx(expected, rel=rtol)


def _tuples(name, emb, labels):
    """indices_tuples PML's class accepts, from PML's own miners or built by hand."""
    if name == "labels":
        return None
    if name == "pairs_by_hand":
        a1, p, a2, n = [t[::3] for t in pml_ext_all_pairs(labels)]
        return a1, p, a2, n
    if name == "triplets_by_hand":
        from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
        a, p, n = lmu.get_all_triplets_indices(labels)
        return a[::5], p[::5], n[::5]
    miner = {
        "MultiSimilarityMiner": miners.MultiSimilarityMiner(epsilon=0.5),
        "TripletMarginMiner": miners.TripletMarginMiner(margin=0.5, type_of_triplets="all"),
        "BatchHardMiner": miners.BatchHardMiner(),
        "PairMarginMiner": miners.PairMarginMiner(pos_margin=0.3, neg_margin=0.8),
    }[name]
    return miner(emb.detach(), labels)


def pml_ext_all_pairs(labels):
    from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
    return lmu.get_all_pairs_indices(labels)


TUPLES = ["labels", "pairs_by_hand", "triplets_by_hand", "MultiSimilarityMiner", "TripletMarginMiner",
          "BatchHardMiner", "PairMarginMiner"]
DISTANCES = {
    "Lp": lambda: distances.LpDistance(),
    "Lp_raw": lambda: distances.LpDistance(normalize_embeddings=False),
    "Cosine": lambda: distances.CosineSimilarity(),
}
REDUCERS = {
    "mean": lambda: reducers.MeanReducer(),
    "avg_nonzero": lambda: reducers.AvgNonZeroReducer(),
    "sum": lambda: reducers.SumReducer(),
    "threshold": lambda: reducers.ThresholdReducer(low=0.05, high=2.0),
}


def assert_same_as_pml(emb, labels, tuples, dtype, **kwargs):
    ours = LiftedStructureLoss(**{k: v() if callable(v) else v for k, v in kwargs.items()})
    theirs = losses.LiftedStructureLoss(**{k: v() if callable(v) else v for k, v in kwargs.items()})
    e1 = emb.detach().clone().requires_grad_()
    e2 = emb.detach().clone().requires_grad_()
    l1 = ours(e1, labels, tuples)
    l2 = theirs(e2, labels, tuples)
    rtol, atol = (1e-5, 1e-6) if dtype == torch.float32 else (1e-10, 1e-12)
    torch.testing.assert_close(l1.detach(), torch.as_tensor(l2, dtype=l1.dtype).detach(), rtol=rtol, atol=atol)
    if l2.requires_grad:
        l1.backward()
        l2.backward()
        torch.testing.assert_close(e1.grad, e2.grad, rtol=rtol, atol=atol)
    return l1


@pytest.mark.parametrize("tuple_name", TUPLES)
@pytest.mark.parametrize("dist_name", list(DISTANCES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_same_as_pml_over_tuples_and_distances(tuple_name, dist_name, dtype):
    # crc32, not hash(): Python salts str hashes per process, so hash() gave other data every run.
    emb, labels = make_batch(32, 6, 5, dtype=dtype, seed=zlib.crc32(f"{tuple_name}/{dist_name}".encode()) % 1000)
    tuples = _tuples(tuple_name, emb, labels)
    loss = assert_same_as_pml(emb, labels, tuples, dtype, distance=DISTANCES[dist_name], neg_margin=0.7,
                              pos_margin=0.1)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("reducer_name", list(REDUCERS))
@pytest.mark.parametrize("tuple_name", ["labels", "MultiSimilarityMiner"])
def test_same_as_pml_over_reducers(reducer_name, tuple_name, device):
    emb, labels = make_batch(30, 6, 4, dtype=torch.float64, seed=7, device=device)
    tuples = _tuples(tuple_name, emb, labels)
    assert_same_as_pml(emb, labels, tuples, torch.float64, reducer=REDUCERS[reducer_name])


def test_same_as_pml_with_embedding_regularizer():
    emb, labels = make_batch(16, 4, 3, dtype=torch.float64, seed=3)
    assert_same_as_pml(emb, labels, None, torch.float64,
                       embedding_regularizer=lambda: regularizers.LpRegularizer(), embedding_reg_weight=0.3)


def test_same_as_pml_on_edge_cases():
    emb, labels = make_batch(8, 3, 2, dtype=torch.float64, seed=4)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3])
    # Pair (0,1) has negatives only through anchor 0; pair (3,4): no negatives listed at all.
    a1, p = torch.tensor([0, 1, 3, 5]), torch.tensor([1, 2, 4, 6])
    a2, n = torch.tensor([0, 0, 5]), torch.tensor([3, 7, 0])
    assert_same_as_pml(emb, labels, (a1, p, a2, n), torch.float64)
    # No negatives at all, no positives at all, one pair of each: PML gives zero.
    empty = torch.tensor([], dtype=torch.long)
    for tuples in [(a1, p, empty, empty), (empty, empty, a2, n), (a1[:1], p[:1], a2[:1], n[:1])]:
        loss = assert_same_as_pml(emb, labels, tuples, torch.float64)
        assert loss.item() == 0
    # A pair listed with a1 == p (PML's mask then holds one row).
    assert_same_as_pml(emb, labels, (torch.tensor([0, 1]), torch.tensor([0, 2]), a2, n), torch.float64)


def test_paper_edge_cases_option():
    emb, labels = make_batch(8, 3, 2, dtype=torch.float64, seed=4)
    a1, p = torch.tensor([0, 3]), torch.tensor([1, 4])
    a2, n = torch.tensor([0]), torch.tensor([5])
    raw = distances.LpDistance(normalize_embeddings=False)
    d = torch.cdist(emb.detach(), emb.detach())
    # Pair (3,4) has no negatives: -inf inside the hinge -> 0. Pair (0,1): log(exp(1 - D05)) + D01.
    expected = (max(0.0, 1 - d[0, 5].item() + d[0, 1].item()) ** 2 / 2 + 0.0) / 2
    loss = LiftedStructureLoss(edge_cases="paper", distance=raw)(emb, labels, (a1, p, a2, n))
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    # One positive and one negative pair: scored under "paper", zero under "pml".
    single = (a1[:1], p[:1], a2, n)
    assert LiftedStructureLoss(edge_cases="paper", distance=raw)(emb, labels, single).item() > 0
    assert LiftedStructureLoss(distance=raw)(emb, labels, single).item() == 0
    with pytest.raises(ValueError, match="edge_cases"):
        LiftedStructureLoss(edge_cases="bogus")


def ref_emb_loss_loop(emb, labels, ref, ref_labels, alpha=1.0, skip_pairs=()):
    """Column-wise definition: negatives of reference j are the queries k with a different label.
    ``skip_pairs``: (query, reference) positive pairs left out, e.g. a sample and its own copy."""
    q, r = emb.detach(), ref.detach()
    d = [[torch.dist(q[i], r[j]).item() for j in range(len(r))] for i in range(len(q))]
    terms = []
    for i in range(len(q)):
        for j in range(len(r)):
            if labels[i] != ref_labels[j] or (i, j) in skip_pairs:
                continue
            s = sum(math.exp(alpha - d[i][k]) for k in range(len(r)) if ref_labels[k] != labels[i])
            s += sum(math.exp(alpha - d[k][j]) for k in range(len(q)) if labels[k] != ref_labels[j])
            terms.append(max(0.0, math.log(s) + d[i][j]) ** 2 / 2)
    return sum(terms) / len(terms)


def test_ref_emb_against_loop_and_reduces_to_paper():
    emb, labels = make_batch(10, 4, 3, dtype=torch.float64, seed=5)
    ref, ref_labels = make_batch(14, 4, 3, dtype=torch.float64, seed=6)
    raw = distances.LpDistance(normalize_embeddings=False)
    loss = LiftedStructureLoss(distance=raw)
    got = loss(emb, labels, ref_emb=ref, ref_labels=ref_labels)
    assert got.item() == pytest.approx(ref_emb_loss_loop(emb, labels, ref, ref_labels), rel=1e-10)
    # Column-wise definition with a mined tuple: same loop restricted to the tuple's pairs.
    got.backward()
    assert torch.isfinite(ref.grad).all() and ref.grad.abs().sum() > 0
    # ref_emb = a copy of the batch, pairs without i == j: the column of j holds the same distances
    # and labels as its row, so the column-wise value is PML's (and the paper's).
    from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
    copy, copy_labels = emb.detach().clone(), labels.clone()
    pairs = lmu.get_all_pairs_indices(labels)
    ours = loss(emb, labels, pairs, ref_emb=copy, ref_labels=copy_labels)
    theirs = losses.LiftedStructureLoss(distance=raw)(emb, labels, pairs, ref_emb=copy, ref_labels=copy_labels)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-10)
    assert ours.item() == pytest.approx(paper_loss(emb, labels), rel=1e-10)
    # And the same object as ref gives the paper's formula.
    assert loss(emb, labels, ref_emb=emb, ref_labels=labels).item() == pytest.approx(
        paper_loss(emb, labels), rel=1e-10)


def test_ref_emb_with_tuple_against_loop():
    emb, labels = make_batch(6, 3, 2, dtype=torch.float64, seed=8)
    ref, ref_labels = make_batch(7, 3, 2, dtype=torch.float64, seed=9)
    from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
    a1, p, a2, n = lmu.get_all_pairs_indices(labels, ref_labels)
    keep_pos, keep_neg = torch.arange(len(a1)) % 2 == 0, torch.arange(len(a2)) % 3 != 0
    tuples = (a1[keep_pos], p[keep_pos], a2[keep_neg], n[keep_neg])
    d = torch.cdist(emb.detach(), ref.detach())
    expected = []
    for i, j in zip(tuples[0].tolist(), tuples[1].tolist()):
        row = [1 - d[i, k] for a, k in zip(tuples[2].tolist(), tuples[3].tolist()) if a == i]
        col = [1 - d[a, k] for a, k in zip(tuples[2].tolist(), tuples[3].tolist()) if k == j]
        terms = row + col
        neg = torch.logsumexp(torch.stack(terms), 0).item() if terms else 0.0
        expected.append(max(0.0, neg + d[i, j].item()) ** 2 / 2)
    got = LiftedStructureLoss(distance=distances.LpDistance(normalize_embeddings=False))(
        emb, labels, tuples, ref_emb=ref, ref_labels=ref_labels)
    assert got.item() == pytest.approx(sum(expected) / len(expected), rel=1e-10)


@pytest.mark.parametrize("tuple_name", ["labels", "pairs_by_hand", "BatchHardMiner"])
@pytest.mark.parametrize("dist_name", ["Lp_raw", "Cosine"])
def test_gradcheck(tuple_name, dist_name):
    emb, labels = make_batch(12, 3, 3, dtype=torch.float64, seed=11)
    tuples = _tuples(tuple_name, emb, labels)
    loss = LiftedStructureLoss(distance=DISTANCES[dist_name](), neg_margin=1.5)
    assert torch.autograd.gradcheck(lambda e: loss(e, labels, tuples), (emb,))


def test_gradcheck_with_ref_emb():
    emb, labels = make_batch(7, 3, 2, dtype=torch.float64, seed=12)
    ref, ref_labels = make_batch(9, 3, 2, dtype=torch.float64, seed=13)
    loss = LiftedStructureLoss(distance=distances.LpDistance(normalize_embeddings=False), neg_margin=2.0)
    assert torch.autograd.gradcheck(lambda e, r: loss(e, labels, ref_emb=r, ref_labels=ref_labels), (emb, ref))


def test_large_norms_are_stable():
    emb, labels = make_batch(64, 16, 8, dtype=torch.float32, seed=14, scale=1e3 / 4)
    loss = LiftedStructureLoss(distance=distances.LpDistance(normalize_embeddings=False))(emb, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(emb.grad).all()
    assert loss.item() > 0


def test_bfloat16_close_to_float32():
    emb, labels = make_batch(64, 16, 8, dtype=torch.float32, seed=15)
    loss = LiftedStructureLoss()
    ref = loss(emb, labels)
    half = emb.detach().to(torch.bfloat16).requires_grad_()
    got = loss(half, labels)
    got.backward()
    assert got.dtype == torch.bfloat16 and torch.isfinite(half.grad.float()).all()
    assert got.float().item() == pytest.approx(ref.item(), rel=3e-2)


def test_cross_batch_memory():
    emb, labels = make_batch(16, 8, 4, dtype=torch.float64, seed=16)
    emb2, labels2 = make_batch(16, 8, 4, dtype=torch.float64, seed=17)
    raw = distances.LpDistance(normalize_embeddings=False)
    ours = losses.CrossBatchMemory(loss=LiftedStructureLoss(distance=raw), embedding_size=8, memory_size=64)
    theirs = losses.CrossBatchMemory(loss=losses.LiftedStructureLoss(distance=raw), embedding_size=8,
                                     memory_size=64)
    for xbm in (ours, theirs):
        xbm.embedding_memory = xbm.embedding_memory.double()
    # First step: the memory is the batch itself at the same positions, so PML's a2 == p rule and
    # the column-wise rule coincide.
    assert ours(emb, labels).item() == pytest.approx(theirs(emb, labels).item(), rel=1e-10)
    # Second step: the batch sits at memory rows 16..31 and PML's a2 == p compares batch positions
    # with memory positions, so only the column-wise loop is a valid oracle. XBM drops each
    # sample's comparison with its own copy in memory.
    memory = torch.cat([emb.detach(), emb2.detach()])
    memory_labels = torch.cat([labels, labels2])
    expected = ref_emb_loss_loop(emb2, labels2, memory, memory_labels,
                                 skip_pairs={(i, 16 + i) for i in range(16)})
    got = ours(emb2, labels2)
    assert got.item() == pytest.approx(expected, rel=1e-10)
    got.backward()
    assert torch.isfinite(emb2.grad).all()


def test_distributed_wrapper_world_size_one():
    from pytorch_metric_learning.utils import distributed as pml_dist
    emb, labels = make_batch(16, 8, 4, dtype=torch.float64, seed=18)
    plain = LiftedStructureLoss()(emb, labels)
    wrapped = pml_dist.DistributedLossWrapper(LiftedStructureLoss())(emb, labels)
    assert wrapped.item() == pytest.approx(plain.item(), rel=1e-10)


def test_collect_stats():
    emb, labels = make_batch(20, 4, 4, dtype=torch.float64, seed=19)
    loss = LiftedStructureLoss(collect_stats=True, neg_margin=0.05)
    loss(emb, labels)
    num_pos = int(((labels[:, None] == labels[None]).sum() - len(labels)).item())
    assert loss.num_pos_pairs == num_pos
    assert 0 < loss.num_active_pairs <= num_pos
    assert "num_active_pairs" in loss._record_these_stats


@pytest.mark.parametrize("bad,kind,name", [
    (torch.randn(4), ValueError, "embeddings"),
    (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), ValueError, "embeddings"),
    (torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), ValueError, "embeddings"),
    (torch.ones(2, 2, dtype=torch.long), TypeError, "embeddings"),
])
def test_bad_embeddings(bad, kind, name):
    with pytest.raises(kind, match=name):
        LiftedStructureLoss()(bad, torch.tensor([0, 1])[: len(bad)] if bad.dim() == 2 else torch.arange(4))


def test_bad_labels_and_tuples():
    emb = torch.randn(4, 3)
    with pytest.raises(ValueError, match="labels"):
        LiftedStructureLoss()(emb, torch.tensor([0, 1, 0]))
    with pytest.raises(TypeError, match="labels"):
        LiftedStructureLoss()(emb, torch.tensor([0.0, 1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="ref_labels"):
        LiftedStructureLoss()(emb, torch.tensor([0, 1, 0, 1]), ref_emb=torch.randn(5, 3),
                              ref_labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="indices_tuple"):
        LiftedStructureLoss()(emb, torch.tensor([0, 1, 0, 1]), (torch.tensor([0]), torch.tensor([1])))


@pytest.mark.parametrize("emb,labels", [
    (torch.randn(1, 3, requires_grad=True), torch.tensor([0])),
    (torch.randn(5, 3, requires_grad=True), torch.arange(5)),
    (torch.randn(5, 3, requires_grad=True), torch.zeros(5, dtype=torch.long)),
])
def test_degenerate_input_gives_zero_loss_that_backpropagates(emb, labels):
    loss = LiftedStructureLoss()(emb, labels)
    assert loss.item() == 0
    loss.backward()
    assert emb.grad is not None and (emb.grad == 0).all()


def test_exported_and_shadows_pml_by_name():
    assert pml_ext.LiftedStructureLoss is LiftedStructureLoss
    assert LiftedStructureLoss.__name__ == losses.LiftedStructureLoss.__name__
    assert isinstance(LiftedStructureLoss().distance, distances.LpDistance)
    assert LiftedStructureLoss().distance.normalize_embeddings
