"""PB's cascaded-embedding models, by value: ``LayerExtractor`` and ``ListOfModels``.

Oracles: the same layers called one by one by hand (the extractor must return exactly their
pooled outputs, in the order asked for), and small cases with weights set so that every output
number is worked out in the comments.
"""
import pytest
import torch

from pml_ext.runner.objects.pb_models import LayerExtractor, ListOfModels, mlp_layer_sizes


def net(device) -> torch.nn.Sequential:
    gen = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(1, 3, 3, padding=1)
    fc = torch.nn.Linear(3, 2)
    with torch.no_grad():
        for p in (*conv.parameters(), *fc.parameters()):
            p.copy_(torch.randn(p.shape, generator=gen))
    model = torch.nn.Sequential()
    model.add_module("conv", conv)
    model.add_module("relu", torch.nn.ReLU())
    model.add_module("pool", torch.nn.AdaptiveAvgPool2d(1))
    model.add_module("flat", torch.nn.Flatten())
    model.add_module("fc", fc)
    return model.to(device)


def test_layer_extractor_returns_each_named_layers_pooled_output_in_the_order_asked(device):
    model = net(device)
    x = torch.randn(5, 1, 6, 6, generator=torch.Generator().manual_seed(1)).to(device)
    # by hand: the conv's map [5, 3, 6, 6] averaged over its 6 x 6 positions; fc's [5, 2] as it is
    conv_out = model.conv(x)
    fc_out = model.fc(model.flat(model.pool(model.relu(conv_out))))
    expected = torch.cat([fc_out, conv_out.mean(dim=(2, 3))], dim=1)
    extractor = LayerExtractor(model, ["fc", "conv"])
    out = extractor(x)
    assert out.shape == (5, 5) and extractor.output_sizes == [2, 3]
    assert torch.allclose(out, expected, atol=1e-6)
    assert not model.conv._forward_hooks and not model.fc._forward_hooks  # the hooks are removed


def test_layer_extractor_worked_example():
    # A 1x1 conv with weight 2, bias 1 on the 2x2 image [[0, 1], [2, 3]]: [[1, 3], [5, 7]], mean 4.
    conv = torch.nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        conv.weight.fill_(2.0)
        conv.bias.fill_(1.0)
    out = LayerExtractor(torch.nn.Sequential(conv), ["0"])(torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]]))
    assert out.tolist() == [[4.0]]


def test_layer_extractor_names_a_missing_layer():
    with pytest.raises(ValueError, match=r"layers_to_extract: \['layer9'\] not in Sequential; .*conv, relu"):
        LayerExtractor(net("cpu"), ["conv", "layer9"])


def test_list_of_models_gives_each_model_its_slice_in_order(device):
    # Slices of widths 2 and 3 of [1, 2, 3, 4, 5] and [10, 20, 30, 40, 50]: the first model sums
    # its slice (1 + 2 = 3; 30), the second doubles it ([6, 8, 10]; [60, 80, 100]).
    summer, doubler = torch.nn.Linear(2, 1, bias=False), torch.nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        summer.weight.fill_(1.0)
        doubler.weight.copy_(2 * torch.eye(3))
    model = ListOfModels([summer, doubler], [2, 3]).to(device)
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [10.0, 20.0, 30.0, 40.0, 50.0]], device=device)
    assert model(x).tolist() == [[3.0, 6.0, 8.0, 10.0], [30.0, 60.0, 80.0, 100.0]]
    with pytest.raises(ValueError, match="input_sizes: 1 sizes for 2 models"):
        ListOfModels([summer, doubler], [5])


def test_the_cascade_trains_each_embedder_on_its_own_layer(device):
    # The extractor's slices feed the embedders in order: embedder i sees layer i only, so the
    # gradient of embedder 0's output reaches conv through conv's pooled features alone.
    model = net(device)
    extractor = LayerExtractor(model, ["conv", "fc"])
    x = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(2)).to(device)
    features = extractor(x)
    embedders = ListOfModels([torch.nn.Linear(3, 4), torch.nn.Linear(2, 4)], extractor.output_sizes).to(device)
    out = embedders(features)
    out[:, :4].sum().backward()

    def grad(p):
        return 0.0 if p.grad is None else float(p.grad.abs().sum())

    assert grad(model.fc.weight) == 0 and grad(embedders.list_of_models[1].weight) == 0
    assert grad(model.conv.weight) > 0 and grad(embedders.list_of_models[0].weight) > 0


@pytest.mark.parametrize("role, sizes, expected", [
    ("embedder", [64], [512, 64]),                 # the trunk's 512 prepended
    ("generator", [3, 2, 1], [1536, 1024, 512]),   # multiples of the trunk's 512
    ("classifier", [], [512, 100]),                # embedding in, the 100 training classes out
])
def test_mlp_layer_sizes_by_role(role, sizes, expected):
    assert mlp_layer_sizes(role, sizes, 512, 100) == expected
