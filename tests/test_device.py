"""Device handling: the index and the runner on ``TEST_DEVICE``, and the CUDA-only branches.

The branches that only a GPU takes (``SyncBatchNorm`` and ``device_ids`` under
``DistributedDataParallel``, the NCCL backend) are checked twice: their choice on any machine,
with torch's DDP and process-group start replaced by recorders, and for real under the ``cuda``
mark, which skips with a reason on a machine without CUDA. Oracles: brute-force neighbours on
the CPU, a plain BatchNorm on the same batch (a one-rank SyncBatchNorm normalises with the same
statistics), and the devices of the tensors a run leaves.
"""
import datetime
import socket

import pytest
import torch
import torch.distributed as dist

from pml_ext import EmbeddingIndex
from pml_ext.runner import ExperimentRunner
from pml_ext.runner.run.run_distribution import wrap_models_for_ddp
from pml_ext.utils import distributed as pml_dist


def test_index_on_the_test_device_answers_on_it_with_the_brute_force_neighbours(device):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 8, generator=gen)
    queries = torch.randn(20, 8, generator=gen)
    index = EmbeddingIndex("exact").build(x.to(device))
    distances, indices = index.search(queries.to(device), 5)
    assert distances.device.type == indices.device.type == device.type
    unit = torch.nn.functional.normalize  # PML's LpDistance normalises first
    expected = torch.cdist(unit(queries, dim=1), unit(x, dim=1)).topk(5, largest=False)
    assert torch.equal(indices.cpu(), expected.indices)
    assert torch.allclose(distances.cpu(), expected.values, atol=1e-5)


def test_a_run_trains_and_evaluates_on_the_test_device(tmp_path, device):
    overrides = [("device", str(device)), ("num_epochs_train", 1), ("check_untrained_accuracy", False),
                 ("trainer~APPLY~2", {"iterations_per_epoch": 2})]
    runner = ExperimentRunner("e", root_experiment_folder=str(tmp_path), overrides=overrides)
    summary = runner.run()
    objects = next(iter(runner.objects.values()))
    assert {p.device.type for m in objects["models"].values() for p in m.parameters()} == {device.type}
    assert next(iter(summary["schemes"].values()))["last_epoch"] == 1


class RecordingDDP(torch.nn.Module):
    """Stands in for DistributedDataParallel: keeps the module and the device_ids it was given."""

    def __init__(self, module, device_ids=None):
        super().__init__()
        self.module, self.device_ids = module, device_ids


class Trainer:
    def __init__(self):
        gen = torch.Generator().manual_seed(0)
        trunk = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6))
        with torch.no_grad():
            for p in trunk.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
        self.models = {"trunk": trunk, "embedder": torch.nn.Identity()}
        self.loss_funcs = {"metric_loss": torch.nn.Identity()}


@pytest.mark.parametrize("device, sync, ids", [("cuda:1", True, [1]), ("cpu", False, None)], ids=["cuda", "cpu"])
def test_ddp_wrapping_converts_batchnorm_and_pins_the_device_only_on_cuda(monkeypatch, device, sync, ids):
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", RecordingDDP)
    trainer = Trainer()
    params = list(trainer.models["trunk"].parameters())
    plain = wrap_models_for_ddp(trainer, torch.device(device))
    wrapped = trainer.models["trunk"]
    assert isinstance(wrapped, RecordingDDP) and wrapped.device_ids == ids
    assert isinstance(wrapped.module[1], torch.nn.SyncBatchNorm) is sync
    assert isinstance(wrapped.module[1], torch.nn.BatchNorm1d) is not sync
    # the optimizers hold these Parameter objects: the conversion must keep them
    assert all(a is b for a, b in zip(wrapped.module.parameters(), params))
    assert trainer.models["embedder"] is plain["embedder"]          # nothing to train: not wrapped


@pytest.mark.parametrize("cuda, backend", [(True, "nccl"), (False, "gloo")], ids=["cuda", "no-cuda"])
def test_the_process_group_backend_is_nccl_exactly_when_cuda_is_present(monkeypatch, cuda, backend):
    started = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(pml_dist, "is_distributed", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, timeout: started.update(backend=backend,
                                                                                            timeout=timeout))
    assert pml_dist.init_from_env(timeout_seconds=42) is True
    assert started == {"backend": backend, "timeout": datetime.timedelta(seconds=42)}


@pytest.mark.parametrize("configured, cuda, local_rank, device, backend", [
    (None, True, "1", "cuda:1", "nccl"),      # each torchrun rank its own GPU
    (None, True, None, "cuda:0", "nccl"),     # one process: the first GPU
    ("cpu", True, "1", "cpu", "gloo"),        # a cpu run on a machine with GPUs: no NCCL
    ("cuda:0", True, "1", "cuda:0", "nccl"),  # a configured device wins over LOCAL_RANK
    (None, False, "1", "cpu", "gloo"),
], ids=["default-rank1", "default-alone", "cpu-with-cuda", "configured-cuda", "no-cuda"])
def test_the_run_device_is_the_configured_one_else_the_local_rank_gpu_and_the_backend_follows_it(
        monkeypatch, configured, cuda, local_rank, device, backend):
    started = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    if local_rank is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", local_rank)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2 if cuda else 0)
    monkeypatch.setattr(pml_dist, "is_distributed", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, timeout: started.update(backend=backend))
    assert pml_dist.run_device(configured) == torch.device(device)
    assert pml_dist.init_from_env(device=configured) is True
    assert started == {"backend": backend}


@pytest.fixture
def one_rank_nccl_group():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.cuda
def test_on_cuda_a_one_rank_syncbatchnorm_under_ddp_normalises_like_batchnorm(one_rank_nccl_group):
    cuda = torch.device("cuda", 0)
    trainer = Trainer()
    trainer.models = {k: m.to(cuda) for k, m in trainer.models.items()}
    reference = Trainer().models["trunk"].to(cuda)                  # the same weights, not wrapped
    wrap_models_for_ddp(trainer, cuda)
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1)).to(cuda)
    out = trainer.models["trunk"](x)
    assert isinstance(trainer.models["trunk"].module[1], torch.nn.SyncBatchNorm)
    assert torch.allclose(out, reference(x), atol=1e-5)
    assert dist.get_backend() == "nccl"


@pytest.mark.cuda
def test_on_cuda_a_run_keeps_its_models_on_the_gpu(tmp_path):
    overrides = [("device", "cuda:0"), ("num_epochs_train", 1), ("check_untrained_accuracy", False),
                 ("trainer~APPLY~2", {"iterations_per_epoch": 2})]
    runner = ExperimentRunner("e", root_experiment_folder=str(tmp_path), overrides=overrides)
    runner.run()
    objects = next(iter(runner.objects.values()))
    assert {p.device for m in objects["models"].values() for p in m.parameters()} == {torch.device("cuda", 0)}
