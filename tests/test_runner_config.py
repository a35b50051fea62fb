"""The config reader: PB's folder layout, merge order, merge flags, overrides and errors.

Oracles: powerful-benchmarker's documentation (docs/cl_syntax.md and docs/yaml_syntax.md
give the merged result of each flag on worked examples, reproduced by hand below), and
hand-written cases whose expected dict is derived in the comments.
"""
import copy
import pathlib

import pytest
import yaml
from suite_options import PB_CONFIGS

from pml_ext.__main__ import parse_run_args
from pml_ext.runner import ConfigError, ConfigReader, ExperimentConfig, ExperimentRunner
from pml_ext.runner.config.config_merge import merge_configs

PB = pathlib.Path(__file__).parent / "data" / "pb_configs"  # pml_ext's fixtures in PB's layout
PB_REAL = PB_CONFIGS
SEARCH_FILES = {"config_optimizers/with_lr_search.yaml"}


def pb_files():
    return sorted(p.relative_to(PB).as_posix() for p in PB.glob("config_*/*.yaml"))


@pytest.mark.parametrize("relpath", pb_files())
def test_every_pb_yaml_file_loads_and_merges_onto_its_category_default(relpath):
    category, name = relpath.split("/")
    loaded = ConfigReader.load_yaml(str(PB / relpath))
    assert isinstance(loaded, dict) and loaded
    reader = ConfigReader(str(PB))
    names = ["default"] if name == "default.yaml" else ["default", name[:-5]]
    config = reader.read({category: names})
    assert config.sources[category] == [str(PB / category / f"{n}.yaml") for n in names]
    # No flag survives a merge: every key of the result is a plain key.
    def keys(d):
        for k, v in d.items():
            yield k
            if isinstance(v, dict):
                yield from keys(v)
    # Search ranges are kept for the Bayesian search; no other flag survives a merge.
    flagged = [k for k in keys(config.categories[category]) if "~" in str(k)]
    assert flagged == (["lr~LOG_BAYESIAN~"] if relpath in SEARCH_FILES else [])


def test_pb_folder_lists_categories_and_defaults_from_config_foldernames():
    reader = ConfigReader(str(PB))
    assert reader.categories == ["config_dataset", "config_eval", "config_factories", "config_general",
                                 "config_loss_and_miners", "config_models", "config_optimizers",
                                 "config_transforms"]
    assert all(v == ["default"] for v in reader.default_names.values())


@pytest.mark.pb_configs
def test_with_daml_gives_pbs_documented_result():
    # PB's docs/yaml_syntax.md: default + with_daml swaps MetricLossOnly for
    # DeepAdversarialMetricLearning (SWAP 1) and applies the DAML kwargs (APPLY 2), on PB's files:
    expected_trainer = {"DeepAdversarialMetricLearning": {
        "iterations_per_epoch": 100, "dataloader_num_workers": 2, "batch_size": 32,
        "freeze_trunk_batchnorm": True, "label_hierarchy_level": 0,
        "loss_weights": {"metric_loss": 1, "synth_loss": 0.1, "g_adv_loss": 0.1, "g_hard_loss": 0.1,
                         "g_reg_loss": 0.1},
        "set_min_label_to_zero": True, "g_alone_epochs": 0, "metric_alone_epochs": 0,
        "g_triplets_per_anchor": 100}}
    config = ConfigReader(str(PB_REAL)).read({"config_general": ["default", "with_daml"]})
    assert config["trainer"] == expected_trainer
    assert config["num_epochs_train"] == 1000 and config["patience"] == 9


def test_several_files_merge_in_order_and_command_line_comes_last():
    config = ConfigReader(str(PB)).read(
        {"config_general": ["default", "with_48_batch", "with_sop"]},
        [("trainer~APPLY~2", {"batch_size": 8}), ("save_interval", 3)])
    kwargs = config["trainer"]["MetricLossOnly"]
    assert kwargs["batch_size"] == 8                       # default 16 -> file 48 -> command line 8
    assert (config["save_interval"], config["patience"]) == (3, 11)   # with_sop: 6, 11; then --save_interval 3
    assert config.sources["config_general"][-1] == "command line"


# ---- each flag on PB's documented examples (docs/cl_syntax.md) ------------------------------

OPT = {"optimizers": {"trunk_optimizer": {"RMSprop": {"lr": 0.000001}}}}


def test_plain_merge_adds_and_changes_nested_keys():
    out = merge_configs(OPT, {"optimizers": {"trunk_optimizer": {"RMSprop": {"lr": 0.01, "alpha": 0.95}}}})
    assert out == {"optimizers": {"trunk_optimizer": {"RMSprop": {"lr": 0.01, "alpha": 0.95}}}}
    out = merge_configs(OPT, {"optimizers": {"embedder_optimizer": {"Adam": {"lr": 0.01}}}})
    assert out["optimizers"] == {"trunk_optimizer": {"RMSprop": {"lr": 0.000001}},
                                 "embedder_optimizer": {"Adam": {"lr": 0.01}}}
    # Without a flag, a second class lands next to the first (PB's "problem" case).
    out = merge_configs(OPT, {"optimizers": {"trunk_optimizer": {"Adam": {"lr": 0.01}}}})
    assert out["optimizers"]["trunk_optimizer"] == {"RMSprop": {"lr": 0.000001}, "Adam": {"lr": 0.01}}


def test_override_replaces_at_any_depth():
    out = merge_configs(OPT, {"optimizers~OVERRIDE~": {"trunk_optimizer": {"Adam": {"lr": 0.01}}}})
    assert out == {"optimizers": {"trunk_optimizer": {"Adam": {"lr": 0.01}}}}
    two = merge_configs(OPT, {"optimizers": {"embedder_optimizer": {"Adam": {"lr": 0.01}}}})
    out = merge_configs(two, {"optimizers": {"trunk_optimizer~OVERRIDE~": {"Adam": {"lr": 0.01}}}})
    assert out["optimizers"] == {"trunk_optimizer": {"Adam": {"lr": 0.01}}, "embedder_optimizer": {"Adam": {"lr": 0.01}}}


def test_apply_merges_into_every_dict_at_the_depth():
    trainer = {"trainer": {"MetricLossOnly": {"dataloader_num_workers": 2, "batch_size": 32}}}
    out = merge_configs(trainer, {"trainer~APPLY~2": {"batch_size": 256}})
    assert out == {"trainer": {"MetricLossOnly": {"dataloader_num_workers": 2, "batch_size": 256}}}
    two = {"optimizers": {"trunk_optimizer": {"RMSprop": {"lr": 0.000001}}, "embedder_optimizer": {"Adam": {"lr": 0.01}}}}
    out = merge_configs(two, {"optimizers~APPLY~3": {"lr": 0.005}})
    assert out == {"optimizers": {"trunk_optimizer": {"RMSprop": {"lr": 0.005}},
                                  "embedder_optimizer": {"Adam": {"lr": 0.005}}}}
    # ``ContrastiveLoss:`` (null kwargs) at the target depth counts as {}.
    loss = {"loss_funcs": {"metric_loss": {"ContrastiveLoss": None}}}
    assert merge_configs(loss, {"loss_funcs~APPLY~3": {"pos_margin": 0.1}}) == \
        {"loss_funcs": {"metric_loss": {"ContrastiveLoss": {"pos_margin": 0.1}}}}


def test_swap_renames_keeping_kwargs_and_order():
    trainer = {"trainer": {"MetricLossOnly": {"iterations_per_epoch": 100, "batch_size": 32}}}
    out = merge_configs(trainer, {"trainer~SWAP~1": {"YourCustomTrainer": {}}})
    assert out == {"trainer": {"YourCustomTrainer": {"iterations_per_epoch": 100, "batch_size": 32}}}
    transforms = {"transforms": {"train": {"Resize": {"size": 256}, "RandomResizedCrop": {"size": 227},
                                           "RandomHorizontalFlip": {"p": 0.5}}}}
    out = merge_configs(transforms, {"transforms~SWAP~2": {"RandomHorizontalFlip": "RandomVerticalFlip"}})
    assert list(out["transforms"]["train"].items()) == [
        ("Resize", {"size": 256}), ("RandomResizedCrop", {"size": 227}), ("RandomVerticalFlip", {"p": 0.5})]
    with pytest.raises(ConfigError, match="ambiguous"):
        merge_configs(transforms, {"transforms~SWAP~2": {"RandomVerticalFlip": None}})
    with pytest.raises(ConfigError, match="none of the keys"):
        merge_configs(transforms, {"transforms~SWAP~2": {"CenterCrop": "RandomCrop"}})


def test_delete_removes_a_key_and_ignores_a_missing_one():
    models = {"optimizers": {"trunk_optimizer": {"Adam": {}}, "embedder_optimizer": {"Adam": {}}}}
    out = merge_configs(models, {"optimizers": {"embedder_optimizer~DELETE~": {}}})
    assert out == {"optimizers": {"trunk_optimizer": {"Adam": {}}}}
    assert merge_configs(out, {"optimizers": {"embedder_optimizer~DELETE~": {}}}) == out


def test_merge_does_not_modify_its_inputs():
    base = {"a": {"b": {"c": 1}}, "t": {"X": {"k": 1}}}
    update = {"a": {"b": {"d": 2}}, "t~SWAP~1": {"Y": None}, "t~APPLY~2": {"k": 5}}
    before = copy.deepcopy((base, update))
    out = merge_configs(base, update)
    assert (base, update) == before
    assert out == {"a": {"b": {"c": 1, "d": 2}}, "t": {"Y": {"k": 5}}}


def test_search_ranges_merge_as_plain_keys_for_the_bayesian_search():
    out = merge_configs({"t": {"X": {"lr": 1}}}, {"t": {"X": {"lr~LOG_BAYESIAN~": [1e-4, 1], "n~INT_BAYESIAN~": [1, 5]}}})
    assert out == {"t": {"X": {"lr": 1, "lr~LOG_BAYESIAN~": [1e-4, 1], "n~INT_BAYESIAN~": [1, 5]}}}


@pytest.mark.parametrize("update, message", [
    ({"x~APPLY~2": {"k": 1}}, r"x~APPLY~2: ~APPLY~ needs an existing mapping 'x'"),
    ({"t~APPLY~4": {"k": 1}}, r"t~APPLY~4: there is no mapping at depth 4"),
    ({"t~APPLY~": {"k": 1}}, r"needs a depth >= 1"),
    ({"t~FROB~": 1}, r"unknown flag ~FROB~"),
])
def test_flag_errors_name_the_source_and_key(update, message):
    with pytest.raises(ConfigError, match=message) as info:
        merge_configs({"t": {"X": {"k": 0}}}, update, source="f.yaml")
    assert str(info.value).startswith("f.yaml: ")


# ---- files, errors, saving ------------------------------------------------------------------

def make_folder(tmp_path, files):
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(tmp_path)


def test_bad_yaml_names_the_file_line_and_key(tmp_path):
    root = make_folder(tmp_path, {"config_general/default.yaml": "num_epochs_train: 3\ntrainer:\n  X: {a: [1, 2}\n"})
    with pytest.raises(ConfigError, match=r"config_general/default.yaml: trainer: bad YAML at line 3"):
        ConfigReader(root).read()


def test_unknown_file_name_lists_the_available_ones(tmp_path):
    root = make_folder(tmp_path, {"config_general/default.yaml": "a: 1\n", "config_general/fast.yaml": "a: 2\n"})
    with pytest.raises(ConfigError, match=r"no config 'fats' in config_general; available: default, fast"):
        ConfigReader(root).read({"config_general": ["fats"]})
    with pytest.raises(ConfigError, match=r"unknown config category"):
        ConfigReader(root).read({"config_modles": ["default"]})


def test_a_flag_file_alone_explains_what_is_missing():
    # PB: with_daml "won't work by itself"; here it says why, naming file and key.
    with pytest.raises(ConfigError, match=r"with_daml.yaml: trainer~SWAP~1: ~SWAP~ needs an existing mapping"):
        ConfigReader(str(PB)).read({"config_general": ["with_daml"]})


def test_missing_required_key_names_the_category_files(tmp_path):
    config = ConfigReader(str(PB)).read(overrides={"trainer~DELETE~": None})
    with pytest.raises(ConfigError, match=r"config_general \(.*config_general/default.yaml, command line\): "
                                          r"trainer: required key is missing"):
        config.require("trainer", "config_general")
    runner = ExperimentRunner("x", root_experiment_folder=str(tmp_path), root_config_folder=str(PB),
                              overrides={"trainer~DELETE~": None, "dataset~OVERRIDE~": {"Digits": {}}})
    with pytest.raises(ConfigError, match=r"trainer: required key is missing"):
        runner.run()


def test_saved_config_round_trips(tmp_path):
    config = ConfigReader(str(PB)).read({"config_general": ["default", "with_cars196"]})
    config.save(str(tmp_path / "configs"))
    saved = ExperimentConfig.load_saved(str(tmp_path / "configs"))
    assert saved.categories == config.categories
    assert list(saved.categories) == list(config.categories)
    assert yaml.safe_load((tmp_path / "configs" / "config_general.yaml").read_text())["save_interval"] == 4


def test_command_line_words_are_joined_into_yaml_values():
    argv = ["--experiment_name", "e1", "--config_general", "default", "with_256_batch",
            "--config_models", "[default, with_daml]",
            "--trainer~APPLY~2", "{batch_size:", "256,", "dataloader_num_workers:", "0}",
            "--models", "{embedder~OVERRIDE~:", "{Identity:", "{}}}", "--patience", "null", "--check_untrained_accuracy",
            "--splits_to_eval", "val", "test"]
    options, names, overrides = parse_run_args(argv)
    assert options == {"experiment_name": "e1"}
    assert names == {"config_general": ["default", "with_256_batch"], "config_models": ["default", "with_daml"]}
    assert overrides == [("trainer~APPLY~2", {"batch_size": 256, "dataloader_num_workers": 0}),
                         ("models", {"embedder~OVERRIDE~": {"Identity": {}}}),
                         ("patience", None), ("check_untrained_accuracy", True), ("splits_to_eval", ["val", "test"])]
    with pytest.raises(ConfigError, match=r"command line: --trainer: bad YAML"):
        parse_run_args(["--trainer", "{MetricLossOnly:", "{batch_size:", "[}}"])
