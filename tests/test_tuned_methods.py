"""The bundled method files hold tuned settings: each builds and trains, each tuned value lies in
the range its file says was searched, and a Bayesian search over a method file's own ranges runs.

Oracles: the files' own ``search:`` blocks (read with yaml, not through the runner) for the
ranges; the trial folders' saved configs for what the search really trained.
"""
import os

import pytest
import yaml

from pml_ext.runner.config.config_reader import BUNDLED_CONFIG_FOLDER
from pml_ext.runner.objects.main_job_datasets import MAIN_JOB_DATASETS
from pml_ext.runner.report.bayesian_search import BayesianSearch
from pml_ext.runner.report.comparison_runner import ComparisonRunner
from pml_ext.runner.run.experiment_runner import ExperimentRunner

METHODS = os.path.join(BUNDLED_CONFIG_FOLDER, "comparison")
KEYS = sorted(f[:-5] for f in os.listdir(METHODS) if f.endswith(".yaml"))
GLYPHS = {**MAIN_JOB_DATASETS["glyphs"][0], "config_models": ["glyph_pool_cnn_small"]}
CHARACTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def tiny(cache) -> list:
    """62 characters, one epoch of two batches, val only (the test split plays no part)."""
    return [("dataset~APPLY~2", {"characters": CHARACTERS, "cache_dir": str(cache)}), ("num_epochs_train", 1),
            ("trainer~APPLY~2", {"iterations_per_epoch": 2}), ("splits_to_eval", ["val"]),
            ("check_untrained_accuracy", False), ("num_threads", 1)]


def ranges(node, path=()):
    """``{(path..., name): (flag, bounds)}`` of every ``name~FLAG~`` key in a search block."""
    out = {}
    for key, value in (node or {}).items():
        name, _, rest = str(key).partition("~")
        flag = rest.split("~")[0] if rest else None
        if flag in {"BAYESIAN", "LOG_BAYESIAN", "INT_BAYESIAN", "CHOICE"}:
            out[path + (name,)] = (flag, value)
        elif isinstance(value, dict):
            out.update(ranges(value, path + (name,)))
    return out


def leaves(node, name):
    """Every value stored under key ``name`` anywhere in ``node``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == name and not isinstance(value, dict):
                yield value
            yield from leaves(value, name)
    elif isinstance(node, list):
        for item in node:
            yield from leaves(item, name)


def test_eleven_method_files_six_in_the_main_job():
    assert len(KEYS) == 11
    assert [m["key"] for m in ComparisonRunner(dataset="glyphs").methods()] == [
        "pml_triplet_semihard", "lifted_structure", "lifted_hard_neighbors", "smart_mining", "isometric_hard_miner",
        "isometric_class_hard"]


@pytest.mark.parametrize("key", KEYS)
def test_each_tuned_value_lies_in_the_range_its_file_searched(key):
    spec = yaml.safe_load(open(os.path.join(METHODS, key + ".yaml")))
    searched = ranges(spec["search"])
    assert searched, f"{key}: no search ranges"
    for path, (flag, bounds) in searched.items():
        # the tuned value sits in the method's config (under the same leaf name), or in the optimizer defaults
        values = list(leaves(spec["config"], path[-1])) or list(leaves(
            yaml.safe_load(open(os.path.join(BUNDLED_CONFIG_FOLDER, "config_optimizers", "default.yaml"))), path[-1]))
        assert values, f"{key}: no tuned value for {'.'.join(path)}"
        for value in values:
            if flag == "CHOICE":
                assert value in bounds, (key, path, value)
            else:
                assert bounds[0] <= value <= bounds[1], (key, path, value, bounds)


@pytest.mark.parametrize("key", KEYS)
def test_every_method_file_builds_and_trains_a_step(tmp_path, key):
    (method,) = ComparisonRunner(methods=[key], dataset="glyphs").methods()
    summary = ExperimentRunner(key, root_experiment_folder=str(tmp_path / "runs"), config_names=GLYPHS,
                               overrides=list(method["config"].items()) + tiny(tmp_path.parent / "glyph_cache")).run()
    (scheme,) = summary["schemes"].values()
    assert scheme["last_epoch"] == 1 and scheme["best_accuracy"] is not None


def test_a_search_over_a_method_files_own_ranges_runs_two_trials(tmp_path):
    (method,) = ComparisonRunner(methods=["pml_triplet_semihard"], dataset="glyphs").methods()
    result = BayesianSearch("s", 2, root_experiment_folder=str(tmp_path / "runs"), config_names=GLYPHS,
                            overrides=list(method["config"].items()) + list(method["search"].items())
                            + tiny(tmp_path.parent / "glyph_cache")).run()
    assert len(result["trials"]) == 2
    trained = []
    for trial in ("s0", "s1"):
        with open(tmp_path / "runs" / "s" / trial / "configs" / "config_loss_and_miners.yaml") as f:
            config = yaml.safe_load(f)
        m = config["sampler"]["MPerClassSampler"]["m"]
        margin = config["loss_funcs"]["metric_loss"]["TripletMarginLoss"]["margin"]
        assert m in (2, 4, 8) and 0.01 <= margin <= 0.5
        trained.append(margin)
    assert trained[0] != trained[1]


def test_for_dataset_adapts_a_glyph_tuned_file_to_digits_only(tmp_path):
    from pml_ext.runner.config.config_reader import ConfigReader

    def pairs(dataset):
        runner = ComparisonRunner(methods=["lifted_hard_neighbors"], dataset=dataset)
        (method,) = runner.methods()
        config = ConfigReader().read(runner.config_names, runner._overrides(method, True))
        return config.categories["config_loss_and_miners"]["sampler"]["HardNeighborSampler"]["pairs_per_batch"]

    tuned = yaml.safe_load(open(os.path.join(METHODS, "lifted_hard_neighbors.yaml")))
    assert pairs("glyphs") == tuned["config"]["sampler~OVERRIDE~"]["HardNeighborSampler"]["pairs_per_batch"] == 16
    assert pairs("digits") == 4  # digits: 5 training classes


@pytest.mark.parametrize("for_dataset", [{"nosuch": {}}, {"digits": 3}, [1]])
def test_a_bad_for_dataset_names_the_key(tmp_path, for_dataset):
    from pml_ext.runner import ConfigError

    (tmp_path / "m.yaml").write_text(yaml.safe_dump({"name": "m", "config": {}, "for_dataset": for_dataset}))
    with pytest.raises(ConfigError, match=r"m\.yaml: for_dataset: must map bundled benchmark names"):
        ComparisonRunner(methods_folder=str(tmp_path)).methods()
