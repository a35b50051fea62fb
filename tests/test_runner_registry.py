"""Registry resolution and nested building, the split manager, NpzFeatures, and the
epoch-update protocol on fakes. Oracles: PML's and torch's own classes (identity checks),
and hand-derived class splits."""
import logging
import types

import numpy as np
import pytest
import torch
from pytorch_metric_learning import distances, losses, miners, reducers, regularizers

import pml_ext
from pml_ext.runner import ClassDisjointSplitManager, ConfigError, EpochUpdater, NpzFeatures, Registry


def test_pml_ext_classes_resolve_first_and_shadowing_is_logged(caplog):
    registry = Registry()
    with caplog.at_level(logging.INFO, logger="pml_ext.runner"):
        cls = registry.get("loss", "LiftedStructureLoss")
    assert cls is pml_ext.LiftedStructureLoss and cls is not losses.LiftedStructureLoss
    note = ("LiftedStructureLoss: using pml_ext.LiftedStructureLoss, which deliberately shadows "
            "pytorch_metric_learning.losses.LiftedStructureLoss")
    assert registry.notes and registry.notes[0].startswith(note)
    assert note in caplog.text


@pytest.mark.parametrize("kind, name, expected", [
    ("loss", "TripletMarginLoss", losses.TripletMarginLoss),
    ("miner", "MultiSimilarityMiner", miners.MultiSimilarityMiner),
    ("distance", "CosineSimilarity", distances.CosineSimilarity),
    ("reducer", "ThresholdReducer", reducers.ThresholdReducer),
    ("regularizer", "LpRegularizer", regularizers.LpRegularizer),
    ("optimizer", "RMSprop", torch.optim.RMSprop),
    ("lr_scheduler", "StepLR", torch.optim.lr_scheduler.StepLR),
    ("model", "MLP", pml_ext.MLP),
    ("model", "Identity", torch.nn.Identity),
    ("dataset", "Digits", pml_ext.Digits),
    ("dataset", "NpzFeatures", NpzFeatures),
    ("split_manager", "ClassDisjointSplitManager", ClassDisjointSplitManager),
])
def test_names_resolve_to_pml_torch_and_pml_ext_classes(kind, name, expected):
    assert Registry().get(kind, name) is expected


def test_a_miner_gets_its_nested_distance_and_a_loss_its_reducer_and_regularizer():
    registry = Registry()
    miner = registry.build("miner", {"TripletMarginMiner": {"margin": 0.1, "distance": {"CosineSimilarity": {}}}})
    assert isinstance(miner, miners.TripletMarginMiner) and isinstance(miner.distance, distances.CosineSimilarity)
    loss = registry.build("loss", {"ContrastiveLoss": {
        "distance": {"LpDistance": {"power": 2}}, "reducer": {"ThresholdReducer": {"low": 0.1}},
        "embedding_regularizer": {"LpRegularizer": None}}})
    # ContrastiveLoss puts the given reducer behind MultipleReducers, one per loss term.
    assert loss.distance.power == 2 and isinstance(loss.reducer.reducers["pos_loss"], reducers.ThresholdReducer)
    assert isinstance(loss.embedding_regularizer, regularizers.LpRegularizer)


def test_wrapped_and_multiple_losses_are_built_recursively():
    registry = Registry()
    memory = registry.build("loss", {"CrossBatchMemory": {
        "loss": {"LiftedStructureLoss": {"neg_margin": 1}}, "embedding_size": 8, "memory_size": 16,
        "miner": {"MultiSimilarityMiner": {"epsilon": 0.1, "distance": {"CosineSimilarity": {}}}}}})
    assert isinstance(memory.loss, pml_ext.LiftedStructureLoss)
    assert isinstance(memory.miner.distance, distances.CosineSimilarity)
    as_list = registry.build("loss", {"MultipleLosses": {"losses": [{"ContrastiveLoss": None},
                                                                     {"TripletMarginLoss": {"margin": 0.3}}]}})
    assert [type(m) for m in as_list.losses] == [losses.ContrastiveLoss, losses.TripletMarginLoss]
    as_dict = registry.build("loss", {"MultipleLosses": {"losses": {"a": {"ContrastiveLoss": None}},
                                                          "weights": {"a": 2.0}}})
    assert isinstance(as_dict.losses["a"], losses.ContrastiveLoss)


def test_unknown_names_list_the_closest_known_ones():
    with pytest.raises(ConfigError, match=r"f.yaml: loss_funcs.metric_loss: unknown loss 'TripletMarginLos'\. "
                                          r"Closest known names: TripletMarginLoss"):
        Registry().build("loss", {"TripletMarginLos": {}}, "f.yaml", "loss_funcs.metric_loss")
    # PB's default trunk resolves (built through pretrainedmodels); torchvision's names are known
    from pml_ext.runner.objects.trunks import bninception

    assert Registry().get("model", "bninception") is bninception
    with pytest.raises(ConfigError, match=r"unknown model 'resnet500'\. Closest known names: .*resnet50"):
        Registry().get("model", "resnet500")


def test_constructor_and_spec_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"f.yaml: mining_funcs.m.TripletMarginMiner: TripletMarginMiner\(...\) "
                                          r"failed: TypeError"):
        Registry().build("miner", {"TripletMarginMiner": {"marjin": 1}}, "f.yaml", "mining_funcs.m")
    with pytest.raises(ConfigError, match=r"expected one \{ClassName: \{kwargs\}\} entry, got \['A', 'B'\]"):
        Registry().build("loss", {"A": {}, "B": {}}, "f.yaml", "loss_funcs.x")


def test_register_classes_and_modules_takes_precedence(tmp_path):
    class TripletMarginLoss(losses.ContrastiveLoss):
        pass

    registry = Registry()
    registry.register("loss", TripletMarginLoss)
    assert registry.get("loss", "TripletMarginLoss") is TripletMarginLoss
    module = types.ModuleType("my_models")
    module.Tiny = type("Tiny", (torch.nn.Module,), {})
    registry.register("model", module)
    assert registry.get("model", "Tiny") is module.Tiny
    assert "Tiny" in registry.known_names("model")
    with pytest.raises(ValueError, match="kind must be one of"):
        registry.register("lossss", TripletMarginLoss)
    with pytest.raises(TypeError, match="obj must be a class, a function or a module"):
        registry.register("loss", 3)
    assert callable(pml_ext.register)


# ---- ClassDisjointSplitManager ---------------------------------------------------------------

def test_class_disjoint_splits_on_digits_follow_pbs_rule():
    digits = pml_ext.Digits()
    labels = digits.labels.numpy()
    # 10 classes, test_size 0.5 from position 5: test = 5..9; trainval 0..4 cut into 4
    # partitions with numpy.array_split -> [0, 1], [2], [3], [4].
    manager = ClassDisjointSplitManager(test_size=0.5, test_start_idx=0.5, num_training_partitions=4,
                                        num_training_sets=4)
    schemes = manager.split_schemes(digits)
    assert list(schemes) == [f"Test50_50_Partitions4_{i}" for i in range(4)]
    expected_val = [[0, 1], [2], [3], [4]]
    for (name, splits), val in zip(schemes.items(), expected_val):
        assert sorted(set(labels[splits["test"]])) == [5, 6, 7, 8, 9]
        assert sorted(set(labels[splits["val"]])) == val
        assert sorted(set(labels[splits["train"]])) == sorted(set(range(5)) - set(val))
        everything = np.concatenate(list(splits.values()))
        assert len(everything) == len(labels) and len(np.unique(everything)) == len(labels)


def test_wrap_around_and_no_validation_split():
    classes = np.arange(10)
    # 0.8 * 10 = position 8; 5 test classes wrap: 8, 9, 0, 1, 2.
    wrap = ClassDisjointSplitManager(test_size=0.5, test_start_idx=0.8, num_training_partitions=1,
                                     num_training_sets=1).class_splits(classes)
    assert wrap == [{"train": pytest.approx([3, 4, 5, 6, 7]), "test": pytest.approx([0, 1, 2, 8, 9])}]
    with pytest.raises(ValueError, match="num_training_sets must be in"):
        ClassDisjointSplitManager(num_training_partitions=2, num_training_sets=3)
    with pytest.raises(ValueError, match="test_size must be in"):
        ClassDisjointSplitManager(test_size=1.0)
    with pytest.raises(ValueError, match="labels_attr_name"):
        ClassDisjointSplitManager().split_schemes([1, 2, 3])


# ---- NpzFeatures -----------------------------------------------------------------------------

def test_npz_features_round_trip_and_errors(tmp_path):
    features = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float64)
    labels = np.array([0, 0, 1, 1, 2, 2])
    np.savez(tmp_path / "f.npz", features=features, labels=labels, bad=np.zeros((6, 2, 2)))
    data = NpzFeatures("f.npz", dataset_root=str(tmp_path))
    assert torch.allclose(data.data, torch.from_numpy(features).float())
    assert data[3][1] == 1 and len(data) == 6 and data.labels.dtype == torch.long
    with pytest.raises(ValueError, match=r"features_key 'x' is not in .*arrays are \['bad', 'features', 'labels'\]"):
        NpzFeatures(str(tmp_path / "f.npz"), features_key="x")
    with pytest.raises(ValueError, match="features_key 'bad' must hold a 2-D"):
        NpzFeatures(str(tmp_path / "f.npz"), features_key="bad")
    with pytest.raises(ValueError, match="path does not exist"):
        NpzFeatures(str(tmp_path / "missing.npz"))


# ---- the epoch-update protocol ---------------------------------------------------------------

class Recorder:
    def __init__(self):
        self.calls = []


class TwoArgs(Recorder):
    def update(self, embeddings, labels):
        self.calls.append(("two", embeddings.shape, labels.shape))


class NoUpdate(Recorder):
    pass


class DrivingSampler(Recorder):
    def __init__(self, miner):
        super().__init__()
        self.miner = miner

    def update(self, embeddings, labels, dataset_indices=None):
        self.calls.append("sampler")


def test_updatables_and_controllers_are_recognised_by_their_protocols():
    from pml_ext import AdaptiveController, HardNeighborSampler, SmartBatchSampler, SmartMiner
    from pml_ext.utils.protocols import Controller, EpochUpdatable

    emb, labels = torch.zeros(5, 3), torch.zeros(5, dtype=torch.long)
    for cls in (SmartMiner, SmartBatchSampler, HardNeighborSampler, TwoArgs):
        assert issubclass(cls, EpochUpdatable), cls
    assert not issubclass(NoUpdate, EpochUpdatable)
    assert issubclass(AdaptiveController, Controller) and not issubclass(TwoArgs, Controller)
    obj = TwoArgs()
    EpochUpdater.call_update(obj, emb, labels)
    assert obj.calls == [("two", (5, 3), (5,))]
    updater = EpochUpdater({"a": TwoArgs(), "b": NoUpdate()}, None, {}, lambda: (emb, labels))
    assert [name for name, _ in updater.updatables] == ["mining_funcs.a"]


def test_a_miner_that_a_sampler_drives_is_left_to_it_and_controllers_step_before_updates():
    order = []
    miner, other = TwoArgs(), TwoArgs()
    sampler = DrivingSampler(miner)

    class Controller:
        def observe(self):
            order.append("observe")

        def step(self):
            order.append("step")

    class Module:
        margin = 0.5

    def embed():
        order.append("embed")
        return torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)

    updater = EpochUpdater({"tuple_miner": miner, "other": other}, sampler,
                           {"c": (Controller(), Module(), "margin")}, embed)
    assert [name for name, _ in updater.updatables] == ["mining_funcs.other", "sampler"]
    updater.end_of_iteration()
    settings = updater.end_of_epoch(types.SimpleNamespace(epoch=1))
    assert order == ["observe", "step", "embed"] and settings == {"c_margin": 0.5}
    assert miner.calls == [] and other.calls == [("two", (4, 2), (4,))] and sampler.calls == ["sampler"]
