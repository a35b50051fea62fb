"""GlyphPoolCNN: shapes, the registry name, and a checkpoint written from a DDP-wrapped trunk
loading into a plain one (its channels_last equality with a plain NCHW stack is tested beside
GlyphCNN's in test_glyphs.py)."""
import os

import pytest
import torch

import pml_ext
from dist_utils import run_world


def test_shapes_layers_and_bad_arguments():
    model = pml_ext.GlyphPoolCNN()
    assert model(torch.zeros(3, 1, 32, 32)).shape == (3, 128)
    pools = [m for m in model if isinstance(m, torch.nn.MaxPool2d)]
    convs = [m for m in model if isinstance(m, torch.nn.Conv2d)]
    assert len(pools) == 3 and len(convs) == 4 and all(c.stride == (1, 1) for c in convs)
    # The first convolution sees the full 32x32 image: its output keeps the input's size.
    assert model[0](torch.zeros(1, 1, 32, 32)).shape == (1, 32, 32, 32)
    small = pml_ext.GlyphPoolCNN(channels=[4, 8], pools=[True, False], in_channels=3)
    assert small(torch.zeros(2, 3, 32, 32)).shape == (2, 8)
    with pytest.raises(ValueError, match="pools must give true or false for each of the 2 blocks"):
        pml_ext.GlyphPoolCNN(channels=[4, 8], pools=[True])
    with pytest.raises(ValueError, match="pools must give true or false"):
        pml_ext.GlyphPoolCNN(channels=[4, 8], pools=[1, 0])
    with pytest.raises(ValueError, match="channels must be"):
        pml_ext.GlyphPoolCNN(channels=[], pools=[])


def test_registry_builds_it_by_name_from_a_config():
    from pml_ext.runner.objects.registry import Registry

    registry = Registry()
    cls = registry.get("model", "GlyphPoolCNN")
    assert cls is pml_ext.GlyphPoolCNN
    assert cls(channels=[4], pools=[True])(torch.zeros(1, 1, 8, 8)).shape == (1, 4)


def _ddp_step_and_save(rank, world_size, folder):
    torch.manual_seed(0)
    model = pml_ext.GlyphPoolCNN(channels=[4, 8], pools=[True, False])
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
    images = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(rank))
    ddp(images).square().sum().backward()
    optimizer.step()
    if rank == 0:
        torch.save(ddp.module.state_dict(), os.path.join(folder, "trunk.pt"))
        model.eval()
        with torch.no_grad():
            torch.save(model(torch.ones(2, 1, 16, 16)), os.path.join(folder, "out.pt"))
    # Both ranks release DDP and leave together: a rank that tore its process group down while
    # its peer was still saving aborted once (gloo: "terminate called without an active exception").
    del ddp
    torch.distributed.barrier()


def test_a_ddp_trained_trunk_saves_and_loads_into_a_plain_one(tmp_path):
    run_world(_ddp_step_and_save, str(tmp_path), world_size=2, timeout_seconds=120)
    plain = pml_ext.GlyphPoolCNN(channels=[4, 8], pools=[True, False]).eval()
    plain.load_state_dict(torch.load(tmp_path / "trunk.pt"))
    with torch.no_grad():
        torch.testing.assert_close(plain(torch.ones(2, 1, 16, 16)), torch.load(tmp_path / "out.pt"))
    # The step changed the weights (so the comparison above is not between two fresh models).
    torch.manual_seed(0)
    initial = pml_ext.GlyphPoolCNN(channels=[4, 8], pools=[True, False])
    assert not torch.equal(initial[0].weight, plain[0].weight)
