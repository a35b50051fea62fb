"""States saved with the models carry a format version; a version this pml_ext cannot read (a later
one) is refused naming it, before anything changes; a state saved before versions existed loads."""
import pytest
import torch

import pml_ext
from pml_ext.index.epoch_knn import EpochKnn
from pml_ext.runner.state.run_state import ControllerState, RngStates, SamplerState

FUTURE = 99


def stateful():
    """``{name: (object, its state, the dict holding the version inside that state)}``."""
    labels = torch.arange(40) // 4
    controlled = pml_ext.SmartMiner(kappa=2.0)
    controller = pml_ext.AdaptiveController(controlled, "kappa", 0.5)
    objects = {
        "AdaptiveController": controller,
        "SmartMiner": pml_ext.SmartMiner(),
        "IsometricHardMiner": pml_ext.IsometricHardMiner(),
        "EpochKnn": EpochKnn("exact"),
        "HardNeighborSampler": pml_ext.HardNeighborSampler(labels, 8),
        "SmartBatchSampler": pml_ext.SmartBatchSampler(pml_ext.SmartMiner(), 9, labels=labels),
        "RngStates": RngStates(),
        "SamplerState": SamplerState(pml_ext.HardNeighborSampler(labels, 8)),
        "ControllerState": ControllerState(controller, controlled, "kappa"),
    }
    out = {}
    for name, obj in objects.items():
        state = obj.state_dict()
        out[name] = (obj, state, state["_extra_state"] if "_extra_state" in state else state)
    return out


@pytest.mark.parametrize("name", list(stateful()))
def test_a_state_of_a_later_format_version_is_refused_naming_the_version(name):
    obj, state, versioned = stateful()[name]
    assert versioned["version"] >= 1
    obj.load_state_dict(state)  # its own version loads
    versioned["version"] = FUTURE
    with pytest.raises(ValueError, match=rf"state\['version'\] is {FUTURE}: this \w+ reads version"):
        obj.load_state_dict(state)
    if name == "AdaptiveController":  # a later format may rename fields: the version is named first
        with pytest.raises(ValueError, match=rf"is {FUTURE}"):
            obj.load_state_dict({"version": FUTURE, "setting": 1.0})


@pytest.mark.parametrize("name", [n for n in stateful() if n != "AdaptiveController"])
def test_a_state_saved_before_versions_existed_still_loads(name):
    obj, state, versioned = stateful()[name]
    del versioned["version"]
    obj.load_state_dict(state)
