"""LiftedStructureLoss under PML's DistributedLossWrapper: gloo, world size 2, spawned processes."""
import pytest
import torch
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from dist_utils import run_world
from dist_workers_lifted import full_batch, lifted_worker
from pml_ext import LiftedStructureLoss

WORLD = 2


def test_non_efficient_equals_the_loss_on_the_concatenated_batch(tmp_path):
    # PML's documented semantics: every rank scores the whole gathered batch and returns
    # loss * world_size; only its own rows get gradients, so rank r's gradient is
    # world_size * dLoss/d(rows of r). DDP's gradient averaging then gives dLoss/d(all).
    run_world(lifted_worker, str(tmp_path), False, world_size=WORLD)
    emb, labels = full_batch(WORLD)
    emb.requires_grad_()
    single = LiftedStructureLoss()(emb, labels)
    single.backward()
    per_rank = len(emb) // WORLD
    for r in range(WORLD):
        out = torch.load(tmp_path / f"rank{r}.pt")
        assert out["loss"].item() / WORLD == pytest.approx(single.item(), rel=1e-10)
        torch.testing.assert_close(out["grad"] / WORLD, emb.grad[r * per_rank:(r + 1) * per_rank],
                                   rtol=1e-5, atol=1e-10)


def test_efficient_equals_local_queries_against_the_gathered_references(tmp_path):
    # efficient=True: rank r's own rows are the queries, the gathered batch (own rows first, then
    # the other ranks' in rank order) the references, self comparisons removed. The reference set
    # is not the query set, so the negatives of a reference sample are taken column-wise.
    run_world(lifted_worker, str(tmp_path), True, world_size=WORLD)
    emb, labels = full_batch(WORLD)
    per_rank = len(emb) // WORLD
    for r in range(WORLD):
        rows = list(range(r * per_rank, (r + 1) * per_rank))
        others = [i for i in range(len(emb)) if i not in rows]
        local = emb[rows].clone().requires_grad_()
        refs = torch.cat([local, emb[others]])
        ref_labels = labels[rows + others]
        tuples = lmu.remove_self_comparisons(lmu.get_all_pairs_indices(labels[rows], ref_labels),
                                             torch.arange(per_rank), len(ref_labels))
        expected = LiftedStructureLoss()(local, labels[rows], tuples, refs, ref_labels) * WORLD
        expected.backward()
        out = torch.load(tmp_path / f"rank{r}.pt")
        assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-10)
        torch.testing.assert_close(out["grad"], local.grad, rtol=1e-5, atol=1e-10)
        # The column-wise value itself, from the formula: every positive pair (i, j), with the
        # negatives of query i along its row and those of reference j down its column.
        d = torch.cdist(torch.nn.functional.normalize(emb[rows]), torch.nn.functional.normalize(refs.detach()))
        a1, p, a2, n = tuples
        neg = torch.zeros_like(d, dtype=torch.bool)
        neg[a2, n] = True
        total = 0.0
        for i, j in zip(a1.tolist(), p.tolist()):
            terms = [1 - d[i, k] for k in range(d.shape[1]) if neg[i, k]]
            terms += [1 - d[k, j] for k in range(d.shape[0]) if neg[k, j]]
            total += max(0.0, torch.logsumexp(torch.stack(terms), 0).item() + d[i, j].item()) ** 2 / 2
        assert out["loss"].item() / WORLD == pytest.approx(total / len(a1), rel=1e-9)
