"""The glyph benchmark: determinism, the class-disjoint split, the look-alike rule, the cache,
no network, shapes and ranges. Small character sets keep every render under a second."""
import copy
import os
import socket

import numpy as np
import pytest
import yaml
import torch

import pml_ext
from pml_ext.datasets import glyph_cache, glyph_fonts
from pml_ext.datasets.glyph_lookalikes import LOOKALIKE_DISTANCE, lookalike_groups

# Latin, Greek and Cyrillic capital A; then letters and digits that differ.
LOOKALIKES = "A\u0391\u0410"
SMALL = LOOKALIKES + "BCDEFGHKabcdefgh0123456789"


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One cache for the tests that only read: each distinct argument set renders once."""
    return str(tmp_path_factory.mktemp("glyph_cache"))


@pytest.fixture()
def cache(tmp_path):
    return str(tmp_path / "cache")


def small(cache, **kwargs):
    return pml_ext.Glyphs(characters=kwargs.pop("characters", SMALL), cache_dir=cache, **kwargs)


def test_samples_are_one_channel_32x32_in_unit_range_with_pml_items(shared_cache):
    data = small(shared_cache)
    assert data.data.shape[1:] == (1, 32, 32) and data.data.dtype == torch.float32
    assert float(data.data.min()) >= 0 and float(data.data.max()) <= 1
    assert len(data) == data.labels.shape[0] == data.fonts.shape[0]
    image, label = data[3]
    assert image.shape == (1, 32, 32) and isinstance(label, int)
    # every class is drawn by at least min_fonts fonts, samples_per_font times each
    for label in range(data.num_classes):
        fonts = data.fonts[data.labels == label]
        assert len(torch.unique(fonts)) >= 12 and len(fonts) == 2 * len(torch.unique(fonts))
    # images are not blank: every sample has ink
    assert bool((data.data.flatten(1).max(1).values > 0.25).all())  # faintest: an eroded cmti10 "1"


def test_same_arguments_give_bit_identical_tensors_and_the_seed_matters(shared_cache, tmp_path):
    a = small(shared_cache)
    b = small(str(tmp_path / "b"))  # rendered again from scratch in another cache folder
    assert torch.equal(a.data, b.data) and torch.equal(a.labels, b.labels) and a.characters == b.characters
    c = small(shared_cache, seed=1)
    assert torch.equal(a.labels, c.labels) and not torch.equal(a.data, c.data)


def test_no_augmentation_gives_one_clean_sample_per_font(shared_cache):
    clean = small(shared_cache, augment=False, samples_per_font=1)
    for label in range(clean.num_classes):
        fonts = clean.fonts[clean.labels == label]
        assert len(fonts) == len(torch.unique(fonts))
    with pytest.raises(ValueError, match="samples_per_font must be 1 when augment is False"):
        small(shared_cache, augment=False, samples_per_font=2)


def test_latin_greek_and_cyrillic_a_become_one_class_never_three(shared_cache):
    data = small(shared_cache)
    kept = [c for c in LOOKALIKES if c in data.characters]
    assert kept == ["A"]  # the member drawn by most fonts: Latin A is also in the Computer Modern faces
    assert set(data.removed_lookalikes) == set(LOOKALIKES) - {"A"}
    # distinct letters survive the rule
    assert {"B", "C", "a", "b", "0", "1"} <= set(data.characters)


def test_lookalike_rule_against_a_hand_built_case():
    # Three classes in three fonts: 0 and 1 render the same in 2 of 3 shared fonts (share >= 0.5),
    # 2 differs everywhere. Distances are exactly 0 or large, far from the threshold.
    blank = torch.zeros(32, 32)
    x = blank.clone(); x[8:24, 8:12] = 1            # a bar
    y = blank.clone(); y[8:12, 8:24] = 1            # another bar
    z = blank.clone(); z[20:30, 2:30] = 1           # a slab
    images = torch.stack([x, x, z, x, x, z, x, y, z])
    classes = np.array([0, 1, 2] * 3)
    fonts = np.repeat([0, 1, 2], 3)
    assert lookalike_groups(images, classes, fonts, 3) == [[0, 1]]
    # in only 1 of 3 fonts the same: not look-alikes
    images = torch.stack([x, x, z, x, y, z, x, y, z])
    assert lookalike_groups(images, classes, fonts, 3) == []
    assert 0 < LOOKALIKE_DISTANCE < 1


def test_split_is_class_disjoint_halves_with_val_from_the_training_classes(shared_cache):
    train, val, test = pml_ext.glyphs_split(val_fraction=0.25, characters=SMALL, cache_dir=shared_cache)
    sets = [set(d.labels.tolist()) for d in (train, val, test)]
    assert not sets[0] & sets[1] and not sets[0] & sets[2] and not sets[1] & sets[2]
    full = small(shared_cache)
    assert sets[0] | sets[1] | sets[2] == set(range(full.num_classes))
    assert len(sets[2]) == round(full.num_classes / 2)
    assert len(sets[1]) == round(0.25 * (full.num_classes - len(sets[2])))
    # the runner's split manager makes the same test classes from the "all" data set
    from pml_ext import ClassDisjointSplitManager

    scheme = ClassDisjointSplitManager(0.5, 0.5, 1, 1).split_schemes(full)
    runner_test = next(iter(scheme.values()))["test"]
    assert set(full.labels[runner_test].tolist()) == sets[2]
    assert len(test) + len(train) + len(val) == len(full)


def test_split_seed_permutes_the_classes(shared_cache):
    a, b = small(shared_cache), small(shared_cache, split_seed=1)
    assert sorted(a.characters) == sorted(b.characters) and a.characters != b.characters


def test_cache_is_used_then_a_changed_argument_gets_a_new_entry(cache, monkeypatch):
    small(cache)
    files = os.listdir(glyph_cache.cache_folder(cache))
    assert len(files) == 1 and files[0].endswith(".npz")
    calls = []
    monkeypatch.setattr(glyph_cache, "build", lambda *a, **k: calls.append(1))
    again = small(cache)  # served from the cache: build is never called
    assert calls == [] and len(again) > 0
    monkeypatch.undo()
    small(cache, seed=3)
    assert len(os.listdir(glyph_cache.cache_folder(cache))) == 2


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_a_corrupt_cache_file_is_rebuilt_not_trusted(cache, damage):
    good = small(cache)
    folder = glyph_cache.cache_folder(cache)
    path = os.path.join(folder, os.listdir(folder)[0])
    raw = open(path, "rb").read()
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "flip":  # one byte inside the stored images
        raw = bytearray(raw)
        raw[len(raw) // 3] ^= 0xFF
        raw = bytes(raw)
    else:
        raw = b"not a zip file at all"
    with open(path, "wb") as f:
        f.write(raw)
    rebuilt = small(cache)
    assert torch.equal(rebuilt.data, good.data) and torch.equal(rebuilt.labels, good.labels)
    assert glyph_cache._load(path) is not None  # the bad file was replaced by a good one


def test_checksum_detects_changed_arrays_even_in_a_valid_zip(cache):
    small(cache)
    folder = glyph_cache.cache_folder(cache)
    path = os.path.join(folder, os.listdir(folder)[0])
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["labels"] = arrays["labels"][::-1].copy()
    np.savez(path, **arrays)
    assert glyph_cache._load(path) is None


def test_no_network_access_is_attempted(cache, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    data = small(cache, seed=5)
    assert len(data) > 0


def test_fonts_come_from_matplotlib_and_cm_faces_only_give_letters_and_digits(shared_cache):
    import matplotlib

    paths = glyph_fonts.available_fonts()
    assert paths and all(p.startswith(matplotlib.get_data_path()) for p in paths)
    data = small(shared_cache, characters="<>{}AB")  # "<" in cmr10 draws an inverted "!": never used from CM faces
    for char in "<>{}":
        if char in data.characters:
            names = {data.font_names[f] for f in data.fonts[data.labels == data.characters.index(char)].tolist()}
            assert not any(n.startswith("cm") for n in names)


@pytest.mark.parametrize("kwargs, match", [
    ({"split": "validation"}, "split must be one of"),
    ({"min_fonts": 0}, "min_fonts must be an integer >= 1"),
    ({"min_fonts": 40}, "min_fonts=40 but matplotlib ships only"),
    ({"samples_per_font": 1.5}, "samples_per_font must be an integer"),
    ({"seed": -1}, "seed must be an integer >= 0"),
    ({"augment": "yes"}, "augment must be True or False"),
    ({"characters": ""}, "characters must be a non-empty string"),
    ({"characters": "A"}, "at least 2 are needed"),
    ({"max_classes": 1}, "max_classes must be an integer >= 2"),
    ({"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\)"),
])
def test_bad_arguments_name_the_argument(shared_cache, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pml_ext.Glyphs(cache_dir=shared_cache, **{"characters": SMALL, **kwargs})


def test_glyph_cnn_shapes_and_errors():
    model = pml_ext.GlyphCNN()
    assert model(torch.zeros(3, 1, 32, 32)).shape == (3, 128) and len(model.channels) == 3
    assert pml_ext.GlyphCNN(channels=[8, 16], strides=[2, 2])(torch.zeros(2, 1, 32, 32)).shape == (2, 16)
    with pytest.raises(ValueError, match="strides must give 1 or 2"):
        pml_ext.GlyphCNN(channels=[8, 16], strides=[2])
    with pytest.raises(ValueError, match="channels must be"):
        pml_ext.GlyphCNN(channels=[])


@pytest.mark.parametrize("make_trunk", [
    lambda: pml_ext.GlyphCNN(channels=[8, 16], strides=[2, 1]),
    lambda: pml_ext.GlyphPoolCNN(channels=[6, 8, 8], pools=[True, False, True]),
], ids=["GlyphCNN", "GlyphPoolCNN"])
def test_glyph_trunks_in_channels_last_match_a_plain_nchw_stack(make_trunk):
    """The NHWC layout is a speed choice only: outputs and gradients equal a plain NCHW
    Sequential built from the same weights (float64, eval and train mode)."""
    torch.manual_seed(0)
    model = make_trunk().double()
    reference = torch.nn.Sequential(*[copy.deepcopy(m) for m in model]).double()
    for p in reference.parameters():
        p.data = p.data.contiguous()
    images = torch.rand(5, 1, 32, 32, dtype=torch.float64)
    for train in (True, False):
        model.train(train), reference.train(train)
        out, ref = model(images), reference(images)
        torch.testing.assert_close(out, ref)
        out.square().sum().backward(), ref.square().sum().backward()
        for mine, theirs in zip(model.parameters(), reference.parameters()):
            torch.testing.assert_close(mine.grad, theirs.grad)
            mine.grad = theirs.grad = None


def test_main_job_on_glyphs_end_to_end_with_the_cnn(shared_cache, tmp_path, capsys):
    from pml_ext.__main__ import main

    argv = ["run", "--root_experiment_folder", str(tmp_path), "--methods", "pml_triplet_semihard",
            "--num_epochs_train", "1", "--trainer~APPLY~2", "{iterations_per_epoch: 2, batch_size: 32}",
            "--dataset~APPLY~2", f"{{characters: '{SMALL}', cache_dir: '{shared_cache}', samples_per_font: 2}}"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Main job: glyphs" in out and "raw pixels" in out and "untrained network" in out
    folder = tmp_path / "main_job"
    assert (folder / "comparison.png").is_file() and (folder / "comparison.csv").is_file()
    with open(folder / "pml_triplet_semihard" / "configs" / "config_models.yaml") as f:
        trunk = yaml.safe_load(f)["models"]["trunk"]
    assert trunk == {"GlyphPoolCNN": {"channels": [16, 32, 64, 64], "pools": [True, True, True, False]}}


def test_main_job_trunk_option_selects_a_bundled_glyph_trunk(shared_cache, tmp_path, capsys):
    from pml_ext.__main__ import main

    argv = ["run", "--root_experiment_folder", str(tmp_path), "--methods", "pml_triplet_semihard",
            "--trunk", "Glyph_Pool_CNN", "--num_epochs_train", "1", "--check_untrained_accuracy", "false",
            "--trainer~APPLY~2", "{iterations_per_epoch: 1, batch_size: 32}",
            "--dataset~APPLY~2", f"{{characters: '{SMALL}', cache_dir: '{shared_cache}', samples_per_font: 2}}"]
    assert main(argv) == 0
    with open(tmp_path / "main_job" / "pml_triplet_semihard" / "configs" / "config_models.yaml") as f:
        text = f.read()
    assert "GlyphPoolCNN" in text and "GlyphCNN:" not in text


@pytest.mark.parametrize("argv, match", [
    (["--trunk", "resnet"], r"unknown trunk 'resnet'; give one of glyph_cnn, glyph_pool_cnn"),
    (["--dataset", "digits", "--trunk", "glyph_cnn"], "not for digits"),
    (["--experiment_name", "x", "--trunk", "glyph_cnn"], "--config_models NAME"),
])
def test_trunk_option_refuses_unknown_names_and_other_runs_before_writing(tmp_path, capsys, argv, match):
    import re

    from pml_ext.__main__ import main

    assert main(["run", "--root_experiment_folder", str(tmp_path), *argv]) == 2
    assert re.search(match, capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_quick_run_selects_its_bundled_files_and_runs_end_to_end(shared_cache, tmp_path, capsys):
    from pml_ext.__main__ import main
    from pml_ext.runner.report.comparison_runner import ComparisonRunner

    files = ComparisonRunner(root_experiment_folder=str(tmp_path), dataset="quick").config_names
    assert files["config_models"] == ["glyph_pool_cnn_small"] and files["config_dataset"] == ["glyphs", "glyphs_quick"]
    argv = ["run", "--quick", "--root_experiment_folder", str(tmp_path), "--methods", "pml_triplet_semihard",
            "--num_epochs_train", "1", "--save_interval", "1", "--check_untrained_accuracy", "false",
            "--trainer~APPLY~2", "{iterations_per_epoch: 1, batch_size: 32}",
            "--dataset~APPLY~2", f"{{characters: '{SMALL}', cache_dir: '{shared_cache}', samples_per_font: 2}}"]
    assert main(argv) == 0
    assert "Main job: glyphs, quick" in capsys.readouterr().out
    configs = tmp_path / "main_job" / "pml_triplet_semihard" / "configs"
    models = (configs / "config_models.yaml").read_text()
    assert "GlyphPoolCNN" in models and "16" in models
    assert "max_classes: 400" in (configs / "config_dataset.yaml").read_text()


@pytest.mark.parametrize("extra", [["--dataset", "digits"], ["--experiment_name", "x"]])
def test_quick_refuses_another_dataset_or_an_experiment_before_writing(tmp_path, capsys, extra):
    from pml_ext.__main__ import main

    assert main(["run", "--quick", "--root_experiment_folder", str(tmp_path), *extra]) == 2
    assert "--quick" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
