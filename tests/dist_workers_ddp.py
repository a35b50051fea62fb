"""Worker functions for tests/test_runner_ddp.py (module level, so spawn can pickle them)."""
import builtins
import os
import types

import torch

import pml_ext
from pml_ext.runner import ComparisonRunner, ConfigReader, default_registry
from pml_ext.runner.objects.object_factory import ObjectFactory
from pml_ext.runner.run.run_distribution import distributed_loss, distributed_miner, wrap_models_for_ddp

STEPS, PER_RANK_TRIPLETS, LR = 3, 8, 0.05


def method_objects(key):
    """The bundled method's loss and miners, built by the runner's own factory from its config."""
    method = next(m for m in ComparisonRunner(dataset="digits").methods() if m["key"] == key)
    config = ConfigReader().read({}, list(method["config"].items()))
    factory = ObjectFactory(config, default_registry)
    return factory.named_objects("loss_funcs", "loss", True), factory.named_objects("mining_funcs", "miner", False)


def batches(world_size):
    """STEPS concatenated batches of whole triplets [a, p, n, ...] of digits (every method can train on them)."""
    data, _ = pml_ext.digits_split()
    # float64: the miners' comparisons (d(a,n) > d(a,p), ...) then see the same order in one
    # process and in two, whose float32 embeddings differ in the last bits (other matmul shapes)
    x, y = torch.as_tensor(data.data, dtype=torch.float64), torch.as_tensor(data.labels)
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(STEPS):
        a = torch.randint(len(y), (PER_RANK_TRIPLETS * world_size,), generator=gen)
        same = y.unsqueeze(0) == y[a].unsqueeze(1)
        p = torch.multinomial((same & (torch.arange(len(y)) != a.unsqueeze(1))).float(), 1, generator=gen)[:, 0]
        n = torch.multinomial((~same).float(), 1, generator=gen)[:, 0]
        rows = torch.stack([a, p, n], dim=1).flatten()
        out.append((x[rows], y[rows]))
    return out


def models():
    torch.manual_seed(0)
    return {"trunk": pml_ext.MLP([64, 64], final_relu=True).double(), "embedder": pml_ext.MLP([64, 16]).double()}


def train(key, rank, world_size, distributed):
    """STEPS plain SGD steps of the method: world 2 on each rank's share of every batch (rows
    ``rank * 3T ... (rank + 1) * 3T``), or one process (``distributed=False``) on the whole
    concatenated batch. Returns the plain (unwrapped) models.

    SGD, not Adam: Adam's step hardly changes when every gradient is scaled by a constant, so
    a lost or doubled world-size factor (DDP averages the ranks' gradients, PML's loss wrapper
    multiplies by the world size) would not show in the weights; under SGD it scales the step."""
    losses, miners = method_objects(key)
    trainer = types.SimpleNamespace(models=models(), loss_funcs=losses)
    optimizer = torch.optim.SGD([p for m in trainer.models.values() for p in m.parameters()], lr=LR)
    miner = miners.get("tuple_miner")
    plain = trainer.models
    if distributed:
        trainer.loss_funcs = {k: distributed_loss(v, k) for k, v in losses.items()}
        miner = None if miner is None else distributed_miner(miner)
        plain = wrap_models_for_ddp(trainer, torch.device("cpu"))
    size = 3 * PER_RANK_TRIPLETS
    for x, y in batches(world_size):
        if distributed:
            x, y = x[rank * size:(rank + 1) * size], y[rank * size:(rank + 1) * size]
        optimizer.zero_grad()
        emb = trainer.models["embedder"](trainer.models["trunk"](x))
        indices = None if miner is None else miner(emb, y)
        trainer.loss_funcs["metric_loss"](emb, y, indices).backward()
        optimizer.step()
    return plain


def ddp_worker(rank, world_size, keys, out_dir):
    for key in keys:
        plain = train(key, rank, world_size, distributed=True)
        torch.save({k: m.state_dict() for k, m in plain.items()}, os.path.join(out_dir, f"{key}_rank{rank}.pt"))


def main_job_worker(rank, world_size, root, writes_dir):
    """The main job on digits (every bundled method, tiny epochs); records every file and folder
    that rank 1 tries to create under ``root``."""
    attempts = []
    if rank == 1:
        real_open, real_makedirs = builtins.open, os.makedirs

        def guarded_open(file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+") and str(file).startswith(root):
                attempts.append(f"open {file} {mode}")
            return real_open(file, mode, *args, **kwargs)

        def guarded_makedirs(name, *args, **kwargs):
            if str(name).startswith(root):
                attempts.append(f"makedirs {name}")
            return real_makedirs(name, *args, **kwargs)

        builtins.open, os.makedirs = guarded_open, guarded_makedirs
    overrides = [("num_epochs_train", 1), ("trainer~APPLY~2", {"iterations_per_epoch": 2}),
                 ("log_data_to_tensorboard", False)]
    result = ComparisonRunner(root_experiment_folder=root, dataset="digits", overrides=overrides).run()
    with open(os.path.join(writes_dir, f"rank{rank}.txt"), "w") as f:
        f.write("\n".join(attempts))
    torch.save({"rows": len(result["rows"]), "skipped": result["skipped"]}, os.path.join(writes_dir, f"rank{rank}.pt"))
