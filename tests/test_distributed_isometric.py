"""IsometricHardMiner under PML's DistributedMinerWrapper: gloo on CPU, world size 2.

Oracle: a single-process call on the reference set PML's wrapper builds on each rank (the
rank's own batch first, then the other ranks' batches in rank order), and brute-force
checks that every triplet indexes that gathered set correctly.
"""
import pytest
import torch
from pytorch_metric_learning.losses import TripletMarginLoss
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from pytorch_metric_learning.utils.distributed import DistributedLossWrapper, DistributedMinerWrapper

from dist_utils import run_world
from pml_ext.miners.isometric_hard_miner import IsometricHardMiner

WORLD = 2


def rank_batch(rank, regime):
    """Rank ``rank``'s batch: 12 rows (PML's all_gather needs equal sizes), 3 classes,
    healthy clusters or a collapsed blob."""
    gen = torch.Generator().manual_seed(100 + rank)
    labels = torch.arange(12) % 3
    if regime == "healthy":
        centres = torch.eye(3, 4)
        emb = centres[labels] + 0.02 * torch.randn(12, 4, generator=gen)
    else:
        emb = torch.ones(1, 4) + 1e-3 * torch.randn(12, 4, generator=gen)
    return emb.double(), labels


def gathered(rank, regime):
    """What PML's gather gives rank ``rank``: its own batch, then the others in rank order."""
    order = [rank] + [r for r in range(WORLD) if r != rank]
    batches = [rank_batch(r, regime) for r in order]
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


CONFIGS = [(regime, efficient) for regime in ("healthy", "collapsed") for efficient in (False, True)]


def mine_worker(rank, world_size, out_dir):
    # One world for every configuration: spawning processes costs far more than mining.
    for regime, efficient in CONFIGS:
        emb, labels = rank_batch(rank, regime)
        miner = IsometricHardMiner(seed=5)
        triplets = DistributedMinerWrapper(miner, efficient=efficient)(emb, labels)
        loss = DistributedLossWrapper(TripletMarginLoss(margin=0.2), efficient=efficient)(
            emb.clone().requires_grad_(), labels, triplets)
        torch.save({"triplets": triplets, "semi_hard_mode": miner.semi_hard_mode, "loss": float(loss.detach())},
                   f"{out_dir}/{regime}-{efficient}-rank{rank}.pt")


@pytest.fixture(scope="module")
def world_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("isometric_world")
    run_world(mine_worker, str(out_dir), world_size=WORLD)
    return out_dir


@pytest.mark.parametrize("regime, efficient", CONFIGS)
def test_distributed_triplets_match_a_single_process_call_on_the_gathered_batch(world_results, regime, efficient):
    for rank in range(WORLD):
        out = torch.load(world_results / f"{regime}-{efficient}-rank{rank}.pt")
        a, p, n = out["triplets"]
        all_emb, all_labels = gathered(rank, regime)
        own_emb, own_labels = rank_batch(rank, regime)
        single = IsometricHardMiner(seed=5)
        if efficient:
            # Anchors are this rank's rows; positives and negatives index the gathered set.
            expected = lmu.remove_self_comparisons(single(own_emb, own_labels, all_emb, all_labels),
                                                   torch.arange(len(own_emb)), len(all_emb))
            anchor_labels = own_labels[a]
            assert int(a.max()) < len(own_emb)
        else:
            expected = single(all_emb, all_labels)
            anchor_labels = all_labels[a]
        assert out["semi_hard_mode"] == single.semi_hard_mode == (1.0 if regime == "collapsed" else 0.0)
        for got, want in zip((a, p, n), expected):
            assert torch.equal(got, want)
        assert len(a) > 0 and torch.isfinite(torch.tensor(out["loss"]))
        assert bool((anchor_labels == all_labels[p]).all()) and bool((anchor_labels != all_labels[n]).all())
        if regime == "healthy":
            # Hard mode: p is the farthest positive (self excluded) in the whole gathered set.
            x = torch.nn.functional.normalize(all_emb, dim=1)
            anchors = x[a] if not efficient else torch.nn.functional.normalize(own_emb, dim=1)[a]
            global_a = a  # own rows come first in the gathered set
            for i, (ai, pi) in enumerate(zip(global_a.tolist(), p.tolist())):
                same = [j for j in range(len(all_emb)) if all_labels[j] == all_labels[ai] and j != ai]
                d = (anchors[i] - x[same]).norm(dim=1)
                assert pi == same[int(d.argmax())]
