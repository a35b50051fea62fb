"""The runner's distributed machinery (gloo, world size 2, spawned processes).

Oracles: one process trained on the concatenated batch (DDP averages the ranks' gradients and
PML's distributed wrappers compute the loss over the gathered batch, so the parameters must
agree to float tolerance), and a record of every file rank 1 tried to write.

The training is plain SGD in float64, so each step is the learning rate times the gradient:
a gradient off by the world size (2) moves the weights twice or half as far, which the
comparison of the steps (trained minus initial weights, relative tolerance 1e-6) cannot miss."""
import pytest
import torch

from dist_utils import run_world
from dist_workers_ddp import ddp_worker, main_job_worker, models, train
from pml_ext.runner import ComparisonRunner

METHODS = sorted(m["key"] for m in ComparisonRunner(dataset="digits").methods())


@pytest.mark.slow
def test_world_2_under_ddp_equals_one_process_on_the_concatenated_batch_for_every_method(tmp_path):
    run_world(ddp_worker, METHODS, str(tmp_path), world_size=2, timeout_seconds=120)  # one world for all methods
    initial = {k: m.state_dict() for k, m in models().items()}
    for key in METHODS:
        single = {k: m.state_dict() for k, m in train(key, 0, 2, distributed=False).items()}
        moved = max(float((single[m][n] - initial[m][n]).abs().max()) for m in single for n in single[m])
        # the steps moved the weights (a comparison of untouched weights would prove nothing)
        assert moved > 1e-4, key
        for rank in range(2):
            ranked = torch.load(tmp_path / f"{key}_rank{rank}.pt")
            for model, state in single.items():
                for name, value in state.items():
                    torch.testing.assert_close(ranked[model][name] - initial[model][name], value - initial[model][name],
                                               rtol=1e-6, atol=1e-9 * moved,
                                               msg=lambda m: f"{key}: rank {rank} {model}.{name} step: {m}")


def test_multiple_losses_are_wrapped_member_by_member_and_other_losses_are_refused():
    from pytorch_metric_learning.losses import MultipleLosses, TripletMarginLoss
    from pytorch_metric_learning.miners import TripletMarginMiner
    from pytorch_metric_learning.utils.distributed import DistributedLossWrapper, DistributedMinerWrapper

    from pml_ext.runner.run.run_distribution import distributed_loss

    wrapped = distributed_loss(MultipleLosses([TripletMarginLoss(), TripletMarginLoss()],
                                              miners=[TripletMarginMiner(), None], weights=[1, 0.5]))
    assert all(isinstance(m, DistributedLossWrapper) for m in wrapped.losses)
    assert isinstance(wrapped.miners[0], DistributedMinerWrapper) and wrapped.miners[1] is None
    assert wrapped.weights == [1, 0.5]
    as_dict = distributed_loss(MultipleLosses({"a": TripletMarginLoss()}, miners={"a": TripletMarginMiner()}))
    assert isinstance(as_dict.losses["a"], DistributedLossWrapper)
    assert isinstance(as_dict.miners["a"], DistributedMinerWrapper)
    with pytest.raises(TypeError, match="loss_funcs.metric_loss: Linear cannot be computed across ranks"):
        distributed_loss(torch.nn.Linear(2, 2), "loss_funcs.metric_loss")


@pytest.mark.slow
def test_the_main_job_runs_every_method_at_world_2_and_only_rank_0_writes(tmp_path):
    root, writes = tmp_path / "experiments", tmp_path / "writes"
    writes.mkdir()
    run_world(main_job_worker, str(root), str(writes), world_size=2, timeout_seconds=300)
    assert (writes / "rank1.txt").read_text() == ""  # rank 1 created no file and no folder
    rank0 = torch.load(writes / "rank0.pt")
    assert rank0["skipped"] == [] and rank0["rows"] == len(METHODS) + 2  # + untrained and raw-pixel rows
    main_job = root / "main_job"
    assert (main_job / "comparison.csv").read_text().count("\n") == len(METHODS) + 3
    assert (main_job / "comparison.png").is_file()
    for key in METHODS:
        assert (main_job / key / "Test50_50_Partitions1_0" / "saved_models" / "trunk_1.pth").is_file()
        assert "rank 1" not in (main_job / key / "run.log").read_text()
