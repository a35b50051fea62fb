"""Every config file, ours and powerful-benchmarker's, runs one short epoch or fails at start-up.

Each file is merged onto its category's defaults (PB's way of choosing a file) and run on a
generated image folder in the layout its ``dataset`` names, under the speed protocol of
``pb_protocol`` (run length and image size only). A file that cannot run alone fails
before any training, with the message documented for it in docs/runner.md; the feature
combinations (DAML, cascaded embeddings, classifier, unsupervised) then run together.

PB's own files are read from ``../shared/pb_configs`` beside the repository (CI places
them there); the tests that need them are skipped with one reason naming that folder when it is
absent (failed under ``PML_EXT_REQUIRE_PB_CONFIGS=1``, as CI runs them; tests/suite_options.py).
"""
from __future__ import annotations

import math
import pathlib
import re
import sqlite3

import pytest
from pb_protocol import RANDOM_RESNET, RANDOM_TRUNK, run_short
from suite_options import PB_CONFIGS

from pml_ext.runner import ConfigError, ConfigReader

FIXTURES = pathlib.Path(__file__).parent / "data" / "pb_configs"
PB_REAL = PB_CONFIGS
needs_pb = pytest.mark.pb_configs  # conftest.py skips (or fails) these when the folder is absent

# The start-up errors, one per feature that a single file cannot run alone.
CASCADED_NEEDS_LAYERS = r"layers_to_extract: CascadedEmbeddings needs the list of trunk layers"
CLASSIFIER_NEEDS = r"trainer.TrainWithClassifier: missing models.classifier, loss_funcs.classifier_loss"
DAML_NEEDS = r"trainer.DeepAdversarialMetricLearning: missing models.generator, loss_funcs.synth_loss"
UNSUPERVISED_NEEDS = r"UnsupervisedEmbeddingsUsingAugmentations needs transforms.augmentation1"
CASCADED_LOSS_NAMES = r"MetricLossOnly trains loss_funcs.metric_loss, which is missing \(the config has metric_loss_0"
METRIC_LOSS_ONLY_LOSSES = r"MetricLossOnly\(...\) failed: AssertionError: loss_funcs keys must be one of metric_loss"
METRIC_LOSS_ONLY_MODELS = r"MetricLossOnly\(...\) failed: AssertionError: models keys must be one of trunk, embedder"
NOT_IN_RUN = r"optimizers.{}_optimizer: '{}' is not a model or loss of this run"
SEARCH_NEEDS_BAYES = r"~LOG_BAYESIAN~: a search range needs a Bayesian search: add --bayes_opt_iters"
NO_DOWNLOAD = r"pretrained: imagenet asks for pretrained weights, but pml_ext never downloads them"
NO_PRETRAINEDMODELS = r"bninception comes from the pretrainedmodels package, which is not installed"
BATCH_TOO_LARGE = r"trainer.batch_size: batch_size 256 exceeds the 66 samples of the MPerClassSampler's epoch"

FIXTURE_ERRORS = {
    "config_general/with_cascaded.yaml": CASCADED_NEEDS_LAYERS,
    "config_general/with_classifier.yaml": CLASSIFIER_NEEDS,
    "config_general/with_daml.yaml": DAML_NEEDS,
    "config_general/with_unsupervised.yaml": UNSUPERVISED_NEEDS,
    "config_loss_and_miners/with_cascaded.yaml": CASCADED_LOSS_NAMES,
    "config_loss_and_miners/with_classifier.yaml": METRIC_LOSS_ONLY_LOSSES,
    "config_loss_and_miners/with_daml.yaml": METRIC_LOSS_ONLY_LOSSES,
    "config_models/with_bninception.yaml": NO_PRETRAINEDMODELS,
    "config_models/with_classifier.yaml": METRIC_LOSS_ONLY_MODELS,
    "config_models/with_daml.yaml": METRIC_LOSS_ONLY_MODELS,
    "config_models/with_imagenet_weights.yaml": NO_DOWNLOAD,
    "config_optimizers/with_classifier.yaml": NOT_IN_RUN.format("classifier", "classifier"),
    "config_optimizers/with_daml.yaml": NOT_IN_RUN.format("generator", "generator"),
    "config_optimizers/with_lr_search.yaml": SEARCH_NEEDS_BAYES,
}
PB_ERRORS = {
    "config_general/with_256_batch.yaml": BATCH_TOO_LARGE,  # the generated set is small; PB's sets are not
    "config_general/with_cascaded.yaml": CASCADED_NEEDS_LAYERS,
    "config_general/with_classifier.yaml": CLASSIFIER_NEEDS,
    "config_general/with_daml.yaml": DAML_NEEDS,
    "config_general/with_unsupervised.yaml": UNSUPERVISED_NEEDS,
    "config_loss_and_miners/with_cascaded.yaml": CASCADED_LOSS_NAMES,
    "config_loss_and_miners/with_daml.yaml": METRIC_LOSS_ONLY_LOSSES,
    "config_models/with_daml.yaml": METRIC_LOSS_ONLY_MODELS,
    "config_optimizers/with_daml.yaml": NOT_IN_RUN.format("generator", "generator"),
    "config_optimizers/with_metric_loss_optimizer_bayes_opt.yaml": SEARCH_NEEDS_BAYES,
}


def selections(root: pathlib.Path) -> list[tuple[str, dict]]:
    """``(file, {category: ["default", name]})`` per file; all ``default`` files give one
    merged config, so they are run once (as ``*/default.yaml``). An absent folder gives one
    placeholder, which the ``pb_configs`` mark skips with its reason (not an empty, silent set)."""
    if not root.is_dir():
        return [("folder-absent", {})]
    out = [("*/default.yaml", {})]
    for path in sorted(root.glob("config_*/*.yaml")):
        if path.name != "default.yaml":
            out.append((f"{path.parent.name}/{path.name}", {path.parent.name: ["default", path.stem]}))
    return out


def check_file(root, relpath, selection, errors, tmp_path, data_root, extra=()):
    if relpath in errors:
        with pytest.raises(ConfigError, match=errors[relpath]):
            run_short(str(root), selection, tmp_path, data_root, extra)
        assert not list(tmp_path.glob("e/*/saved_csvs/*")), "the error must come before any training"
        return
    summary = run_short(str(root), selection, tmp_path, data_root, extra)
    (scheme,) = summary["schemes"].values()
    assert scheme["last_epoch"] == 1
    (total,) = losses_of_iteration_one(tmp_path, "total_loss")
    assert math.isfinite(total) and total > 0


def losses_of_iteration_one(tmp_path, *names: str) -> tuple:
    """The losses PML's HookContainer recorded at the first iteration (logs.db, loss_histories)."""
    (db,) = tmp_path.glob("e/*/saved_csvs/logs.db")
    with sqlite3.connect(db) as conn:
        row = conn.execute(f"SELECT {', '.join(names)} FROM loss_histories ORDER BY id LIMIT 1").fetchone()
    return tuple(float(v) for v in row)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("images"))


def test_the_fixtures_list_every_error_file_they_hold():
    names = {rel for rel, _ in selections(FIXTURES)}
    assert set(FIXTURE_ERRORS) <= names


@pytest.mark.parametrize("relpath,selection", selections(FIXTURES), ids=[r for r, _ in selections(FIXTURES)])
def test_every_fixture_file_runs_one_short_epoch_or_fails_at_start_up(relpath, selection, tmp_path, data_root):
    check_file(FIXTURES, relpath, selection, FIXTURE_ERRORS, tmp_path, data_root)


@needs_pb
@pytest.mark.parametrize("relpath,selection", selections(PB_REAL), ids=[r for r, _ in selections(PB_REAL)])
def test_every_pb_file_runs_one_short_epoch_with_a_random_trunk_or_fails_at_start_up(relpath, selection,
                                                                                     tmp_path, data_root):
    extra = [RANDOM_TRUNK]
    if relpath == "config_models/cascaded.yaml":  # inception_v3's layers -> resnet18's
        extra = [RANDOM_RESNET, ("layers_to_extract", ["layer3", "fc"])]
    check_file(PB_REAL, relpath, selection, PB_ERRORS, tmp_path, data_root, extra)


@needs_pb
def test_pb_default_trunk_asks_for_weights_it_cannot_download(tmp_path, data_root):
    # PB's default trunk is bninception with pretrained: imagenet, and its cascaded trunk
    # inception_v3 with pretrained: True: both need a local weights file here.
    with pytest.raises(ConfigError, match=r"models.trunk.bninception.pretrained: " + NO_DOWNLOAD):
        run_short(str(PB_REAL), {}, tmp_path, data_root)
    with pytest.raises(ConfigError, match=r"models.trunk.inception_v3.pretrained: pretrained: True asks"):
        run_short(str(PB_REAL), {"config_models": ["cascaded"]}, tmp_path / "b", data_root)


COMBINATIONS = {
    "daml": {"config_general": ["default", "with_daml"], "config_models": ["default", "with_daml"],
             "config_loss_and_miners": ["default", "with_daml"], "config_optimizers": ["default", "with_daml"]},
    "cascaded": {"config_general": ["default", "with_cascaded"], "config_models": ["cascaded"],
                 "config_loss_and_miners": ["default", "with_cascaded"]},
    "unsupervised": {"config_general": ["default", "with_unsupervised"], "config_transforms": ["unsupervised"]},
}


@pytest.mark.parametrize("name", sorted(COMBINATIONS) + ["classifier"])
def test_fixture_feature_combinations_train_their_models(name, tmp_path, data_root):
    selection = COMBINATIONS.get(name) or {
        "config_general": ["default", "with_classifier"], "config_models": ["default", "with_classifier"],
        "config_loss_and_miners": ["default", "with_classifier"], "config_optimizers": ["default", "with_classifier"]}
    summary = run_short(str(FIXTURES), selection, tmp_path, data_root)
    objects = next(iter(summary["runner"].objects.values()))
    models, trainer = objects["models"], objects["trainer"]
    embedder_out = 32 if name != "cascaded" else 16
    if name == "daml":
        # PB's generator sizes are multiples of the trunk's output (576 for mobilenet_v3_small's
        # pooled features): [3, 2, 1] x 576
        linears = [m for m in models["generator"].modules() if type(m).__name__ == "Linear"]
        assert [(m.in_features, m.out_features) for m in linears] == [(1728, 1152), (1152, 576)]
        assert trainer.loss_weights["synth_loss"] == 0.5
        assert all(v != 0 for v in losses_of_iteration_one(tmp_path, "metric_loss", "g_adv_loss", "g_hard_loss"))
    if name == "classifier":
        # the classifier maps the embedding to the 29 training classes (88 classes: 44 test,
        # 44 trainval in 3 partitions of 15, 15, 14; scheme 0 trains on the last two)
        linear = next(m for m in models["classifier"].modules() if type(m).__name__ == "Linear")
        assert (linear.in_features, linear.out_features) == (embedder_out, 29)
        assert losses_of_iteration_one(tmp_path, "classifier_loss")[0] > 0
    if name == "cascaded":
        # resnet18's layer3 (256 channels) and pooled features (512), one 16-d embedder each
        assert models["trunk"].output_sizes == [256, 512] and trainer.embedding_sizes == [16, 16]
        assert all(v > 0 for v in losses_of_iteration_one(tmp_path, "metric_loss_0", "metric_loss_1"))
    if name == "unsupervised":
        assert trainer.sampler is None and len(trainer.transforms) == 2
        assert re.search(r"RandomHorizontalFlip", repr(trainer.transforms[1]))


@needs_pb
@pytest.mark.parametrize("name", sorted(COMBINATIONS))
def test_pb_feature_combinations_run(name, tmp_path, data_root):
    extra = [RANDOM_TRUNK]
    if name == "cascaded":
        extra = [RANDOM_RESNET, ("layers_to_extract", ["layer3", "fc"])]
    if name == "daml":
        # per-iteration work only: 100 synthetic triplets per anchor need ~90M-entry distance matrices
        extra.append(("trainer~APPLY~2", {"g_triplets_per_anchor": 5}))
    summary = run_short(str(PB_REAL), COMBINATIONS[name], tmp_path, data_root, extra)
    assert next(iter(summary["schemes"].values()))["last_epoch"] == 1


def test_fixture_merge_matches_the_documented_daml_result():
    config = ConfigReader(str(FIXTURES)).read({"config_general": ["default", "with_daml"]})
    assert config["trainer"] == {"DeepAdversarialMetricLearning": {
        "iterations_per_epoch": 20, "dataloader_num_workers": 0, "batch_size": 16, "freeze_trunk_batchnorm": True,
        "label_hierarchy_level": 0, "loss_weights": {"metric_loss": 1, "synth_loss": 0.5, "g_adv_loss": 0.5,
                                                       "g_hard_loss": 0.2, "g_reg_loss": 0.2},
        "set_min_label_to_zero": True, "metric_alone_epochs": 0, "g_alone_epochs": 0, "g_triplets_per_anchor": 20}}
