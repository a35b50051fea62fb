"""Image folders in PB's layouts, PB's trunks and transforms, split checks and ``--evaluate``.

Oracles: the files the test writes (paths and labels it chose), torchvision's own transforms
applied by hand, a state_dict saved and compared tensor by tensor, and the accuracy a
finished run recorded in its SQLite records.
"""
from __future__ import annotations

import logging
import os
import pathlib
import sqlite3

import pytest
import torch
from image_layouts import write_layout
from pb_protocol import SPEED, dataset_root

from pml_ext.__main__ import main
from pml_ext.runner import ConfigError, ConfigReader, ExperimentRunner
from pml_ext.runner.objects import datasets as pb_datasets
from pml_ext.runner.objects.object_factory import ObjectFactory
from pml_ext.runner.objects.registry import Registry
from pml_ext.runner.objects.trunks import ToSpaceAndRange, build_trunk
from pml_ext.runner.objects.vision import import_torchvision

FIXTURES = str(pathlib.Path(__file__).parent / "data" / "pb_configs")
LAYOUTS = {"CUB200": {}, "Cars196": {}, "StanfordOnlineProducts": {}, "ImageFolder": {"folder": "my_images"}}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_each_layout_lists_its_images_with_the_labels_written(name, tmp_path):
    paths = write_layout(str(tmp_path), name, num_classes=3, per_class=2, size=8)
    data = getattr(pb_datasets, name)(dataset_root=str(tmp_path), **LAYOUTS[name])
    assert sorted(data.img_paths) == sorted(paths)
    # classes 0, 0, 1, 1, 2, 2 as written; Cars196 keeps the annotation file's 1-based classes (as PB)
    by_path = dict(zip(data.img_paths, data.labels.tolist()))
    first = 1 if name == "Cars196" else 0
    assert [by_path[p] for p in paths] == [first + i // 2 for i in range(6)]
    item = data[0]
    assert set(item) == {"data", "label"} and item["data"].size == (8, 8)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_a_missing_or_incomplete_folder_names_the_expected_layout(name, tmp_path):
    cls = getattr(pb_datasets, name)
    with pytest.raises(ValueError, match=r"does not exist\. Expected layout: <root>/"):
        cls(dataset_root=str(tmp_path / "nowhere"), **LAYOUTS[name])
    paths = write_layout(str(tmp_path), name, num_classes=2, per_class=2, size=8)
    os.remove(paths[1])
    if name in ("CUB200", "ImageFolder"):  # a class folder's listing is what it holds: one image fewer
        assert len(cls(dataset_root=str(tmp_path), **LAYOUTS[name])) == 3
    else:  # an index file names the image: its absence is an error
        with pytest.raises(ValueError, match=r"1 of 4 listed images are missing, e\.g\. .*Expected layout"):
            cls(dataset_root=str(tmp_path), **LAYOUTS[name])
    with pytest.raises(ValueError, match=r"never downloads"):
        cls(dataset_root=str(tmp_path), download=True, **LAYOUTS[name])


def test_config_transforms_are_pbs_pipelines_then_the_trunks_input_convention(tmp_path):
    T = import_torchvision().transforms
    config = ConfigReader(FIXTURES).read()
    factory = ObjectFactory(config, Registry())
    image = write_layout(str(tmp_path), "ImageFolder", num_classes=1, per_class=1, size=40)[0]
    from PIL import Image

    img = Image.open(image).convert("RGB")
    # eval: Resize 36, CenterCrop 32, then ToTensor and ImageNet's normalisation, by hand
    expected = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])(
        T.ToTensor()(T.CenterCrop(32)(T.Resize(36)(img))))
    assert torch.equal(factory.image_transform("eval")(img), expected)
    # train: PB writes tuples as strings ("0.5 1")
    crop = factory.image_transform("train").transforms[1]
    assert crop.scale == [0.5, 1] and crop.ratio == [0.8, 1.25] and factory.image_transform("train")(img).shape == (3, 32, 32)
    # BN-Inception's convention (pretrainedmodels): BGR, 0-255
    x = torch.rand(3, 2, 2)
    assert torch.equal(ToSpaceAndRange("BGR", [0, 255])(x), x[[2, 1, 0]] * 255)


def test_trunk_weights_come_from_a_local_file_and_never_from_a_download(tmp_path):
    resnet18 = import_torchvision().models.resnet18
    reference = resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    trunk = build_trunk("resnet18", resnet18, {"pretrained": "imagenet", "weights_path": str(path)}, "f.yaml",
                        "models.trunk.resnet18", is_trunk=True)
    state = trunk.state_dict()
    assert all(torch.equal(state[k], v) for k, v in reference.state_dict().items() if not k.startswith("fc."))
    assert isinstance(trunk.fc, torch.nn.Identity)  # PB's trunk: the pooled features
    with pytest.raises(ConfigError, match=r"pretrained: imagenet asks for pretrained weights, but pml_ext never "
                                          r"downloads them: give weights_path"):
        build_trunk("resnet18", resnet18, {"pretrained": "imagenet"}, "f.yaml", "k", is_trunk=True)
    with pytest.raises(ConfigError, match=r"do not fit the architecture"):
        build_trunk("resnet34", import_torchvision().models.resnet34, {"weights_path": str(path)}, "f.yaml", "k",
                    is_trunk=True)


def test_bninception_needs_pretrainedmodels_and_says_how_to_get_it():
    pytest.importorskip("torchvision")
    try:
        import pretrainedmodels  # noqa: F401
        pytest.skip("pretrainedmodels is installed")
    except ImportError:
        pass
    from pml_ext.runner.objects.trunks import bninception

    with pytest.raises(ConfigError, match=r'pip install "pml-ext\[pretrainedmodels\]"'):
        build_trunk("bninception", bninception, {}, "f.yaml", "models.trunk.bninception", is_trunk=True)


# ---- split checks -----------------------------------------------------------------------------

DIGITS_PB_SPLITS = [("split_manager~APPLY~2", {"num_training_partitions": 4, "num_training_sets": 4, "val_fraction": 0}),
                    ("splits_to_eval", ["val"]), ("hook_container~APPLY~2", {"validation_split_name": "val"})]


def test_a_one_class_validation_split_is_an_error_at_start_up(tmp_path):
    # digits: 5 trainval classes in PB's 4 partitions are 2, 1, 1, 1 classes: schemes 1-3
    # would validate on one class (P@1 = MAP@R = 1 for any model).
    runner = ExperimentRunner("x", root_experiment_folder=str(tmp_path), overrides=SPEED + DIGITS_PB_SPLITS)
    with pytest.raises(ConfigError, match=r"split scheme Test50_50_Partitions4_1: the query set 'val' has 1 "
                                          r"class\(es\); retrieval accuracy on fewer than 2 classes is 1"):
        runner.run()
    assert not list(tmp_path.glob("x/*/saved_models/*"))


def test_pb_split_schemes_on_a_small_data_set_warn(tmp_path, caplog):
    overrides = SPEED + DIGITS_PB_SPLITS + [("split_manager~APPLY~2", {"num_training_partitions": 2,
                                                                        "num_training_sets": 1})]
    with caplog.at_level(logging.WARNING, logger="pml_ext.runner"):
        ExperimentRunner("x", root_experiment_folder=str(tmp_path), overrides=overrides).run()
    assert "PB's split scheme on a small data set: 10 classes in all" in caplog.text
    assert "(Test50_50_Partitions2_0: 3)" in caplog.text  # array_split of 5 classes in 2: 3 and 2


# ---- --evaluate -------------------------------------------------------------------------------

def test_evaluate_reproduces_the_final_accuracy_of_a_finished_run(tmp_path):
    data = dataset_root(str(tmp_path / "images"), "CUB200")
    run = ["run", "--experiment_name", "e", "--root_config_folder", FIXTURES, "--root_experiment_folder",
           str(tmp_path), "--dataset_root", data, "--config_dataset", "default", "with_one_training_set",
           "--num_epochs_train", "2", "--save_interval", "1", "--check_untrained_accuracy", "false",
           "--num_threads", "1", "--trainer~APPLY~2", "{iterations_per_epoch: 2}"]
    assert main(run) == 0
    scheme = tmp_path / "e" / "Test50_50_Partitions3_0"
    with sqlite3.connect(scheme / "saved_csvs" / "logs.db") as conn:
        recorded = dict(conn.execute("SELECT epoch, precision_at_1_level0 FROM accuracies_normalized_"
                                     "GlobalEmbeddingSpaceTester_level_0_VAL_vs_self").fetchall())
    best_epoch = max(recorded, key=lambda e: (recorded[e], -e))
    before = sorted(os.listdir(scheme / "saved_csvs"))
    assert main(["run", "--experiment_name", "e", "--root_experiment_folder", str(tmp_path),
                 "--dataset_root", data, "--evaluate"]) == 0
    import yaml

    result = yaml.safe_load((scheme / "evaluation_best.yaml").read_text())
    assert result["epoch"] == best_epoch
    (accuracies,) = result["accuracies"].values()
    assert accuracies["precision_at_1_level0"] == pytest.approx(recorded[best_epoch], abs=1e-6)
    assert sorted(os.listdir(scheme / "saved_csvs")) == before  # no new records, no training
    assert not (scheme / "saved_models" / "trunk_3.pth").exists()
    # --evaluate latest: the last epoch's models give the accuracy recorded at the end of the run
    assert main(["run", "--experiment_name", "e", "--root_experiment_folder", str(tmp_path),
                 "--dataset_root", data, "--evaluate", "latest"]) == 0
    latest = yaml.safe_load((scheme / "evaluation_latest.yaml").read_text())
    assert latest["epoch"] == 2
    (accuracies,) = latest["accuracies"].values()
    assert accuracies["precision_at_1_level0"] == pytest.approx(recorded[2], abs=1e-6)


def test_evaluate_errors(tmp_path, capsys):
    assert main(["run", "--experiment_name", "e", "--root_experiment_folder", str(tmp_path), "--evaluate"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert main(["run", "--experiment_name", "e", "--evaluate_ensemble"]) == 2
    assert "ensembles of the split schemes' models are not supported" in capsys.readouterr().err
