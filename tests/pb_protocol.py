"""How the tests run a PB config folder for one short epoch on a generated image folder.

The protocol changes only run length and speed, never what a config means:
one epoch of one iteration, one cross-validation fold, no worker processes, one thread, no
evaluation of the untrained model; PB's 227-pixel crops become 32 pixels (the generated
images are 32 x 32); the trunk is a randomly initialised torchvision ``mobilenet_v3_small``
(``pretrained: null``; half the time of a ``resnet18`` per run, ``resnet18`` where layer
names matter) instead of PB's ImageNet-pretrained BN-Inception, which needs weights this
machine does not have.
"""
from __future__ import annotations

import os

from image_layouts import write_layout

from pml_ext.runner import ConfigReader, ExperimentRunner

# 88 classes of 2 images: PB's split (test 50 %, 4 partitions) leaves 33 training classes,
# enough for MPerClassSampler(m=1) batches of 32, and 11 validation classes.
NUM_CLASSES, PER_CLASS = 88, 2
SPEED = [("num_epochs_train", 1), ("check_untrained_accuracy", False), ("num_threads", 1),
         ("trainer~APPLY~2", {"iterations_per_epoch": 1, "dataloader_num_workers": 0}),
         ("split_manager~APPLY~2", {"num_training_sets": 1})]
RANDOM_TRUNK = ("models", {"trunk~OVERRIDE~": {"mobilenet_v3_small": {"pretrained": None}}})
RANDOM_RESNET = ("models", {"trunk~OVERRIDE~": {"resnet18": {"pretrained": None}}})


def dataset_root(tmp_root: str, layout: str) -> str:
    """A folder holding ``layout`` (written once per ``tmp_root``)."""
    root = os.path.join(tmp_root, layout)
    if not os.path.isdir(root):
        write_layout(root, layout, num_classes=NUM_CLASSES, per_class=PER_CLASS, size=32)
    return root


def small_image_overrides(config) -> list:
    """Every ``size`` of every transform pipeline -> 32 (Resize -> 36, as crops need a margin)."""
    transforms = config.get("transforms") or {}
    out = {}
    for pipeline, steps in transforms.items():
        sized = {name: {"size": 36 if name == "Resize" else 32} for name, kwargs in (steps or {}).items()
                 if isinstance(kwargs, dict) and "size" in kwargs}
        if sized:
            out[pipeline] = sized
    return [("transforms", out)] if out else []


def run_short(root_config_folder: str, selection: dict, tmp_path, data_root: str, extra=()) -> dict:
    """Read ``selection``, apply the protocol, run it on the data set the config names."""
    overrides = list(SPEED) + list(extra)
    config = ConfigReader(root_config_folder).read(selection, overrides)
    overrides += small_image_overrides(config)
    layout = next(iter(config["dataset"]))
    runner = ExperimentRunner("e", root_experiment_folder=str(tmp_path), root_config_folder=root_config_folder,
                              config_names=selection, overrides=overrides,
                              dataset_root=dataset_root(data_root, layout))
    summary = runner.run()
    summary["runner"] = runner
    return summary
