"""Run one powerful-benchmarker-style experiment on PML 2.x: ``pml-ext run --experiment_name NAME``.

Experiment folder (PB's layout)::

    <root_experiment_folder>/<experiment_name>/
        configs/<category>.yaml         the merged config, one file per category
        configs/resume_<n>.yaml         command-line overrides given when resuming
        <split scheme>/saved_models/    trunk_<epoch>.pth, embedder_..., optimizers, controllers
        <split scheme>/saved_csvs/      record-keeper: one CSV per record group + logs.db (SQLite)
        <split scheme>/tensorboard_logs/  when tensorboard is installed
        metrics_per_epoch.csv, primary_metric.png, loss.png, controller_*.png, run.log

Under ``torchrun`` (NCCL for a cuda device, gloo otherwise) every rank trains on its shard of each
epoch's batches; only rank 0 evaluates, saves models and writes records and plots, and it
broadcasts its keep-training decision so that every rank stops at the same epoch.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Mapping

import torch

from ...utils.threads import thread_count
from ..config.config_reader import ConfigReader
from ..config.experiment_config import ExperimentConfig
from ..config.search_space import reject_search_keys
from ..objects.object_factory import ObjectFactory
from ..objects.pb_trainers import PBTrainerRules
from ..objects.registry import default_registry, Registry
from ..objects.split_checks import check_split_classes, map_splits_to_eval
from ..state.experiment_lock import ExperimentLock
from ..state.experiment_report import ExperimentReport
from ..state.run_guard import (check_experiment_name, check_root_folder, has_started, log_fatal_error,
                               remove_failed_start)
from ..state.run_state import seed_epoch
from .config_checks import GENERAL_DEFAULTS, REQUIRED_KEYS, general_settings, split_schemes
from .evaluate_only import EVALUATE_CHOICES
from .rank_wait import describe_collective_failure
from .run_context import RunContext
from .run_interrupt import RunInterrupted, interrupted_at
from .scheme_run import SchemeRun

__all__ = ["ExperimentRunner"]

LOGGER = logging.getLogger("pml_ext.runner")

# PB keys with no effect here (PB's factories, ensembles, Bayesian runner and API parsers)
IGNORED_KEYS = ("api_parser", "factories", "aggregator", "ensemble", "save_figures_on_tensorboard",
                "override_required_compatible_factories", "skip_ensemble_eval_if_already_done")
USED_KEYS = set(GENERAL_DEFAULTS) | set(IGNORED_KEYS) | {
    "trainer", "models", "optimizers", "loss_funcs", "mining_funcs", "sampler", "controllers", "controller",
    "transforms", "tester", "hook_container", "dataset", "split_manager", "layers_to_extract"}


class ExperimentRunner:
    """Read a PB config folder, then train and test every split scheme with PML 2.x.

    Args:
        experiment_name: the experiment folder's name under ``root_experiment_folder``.
        root_experiment_folder: where experiments live (default ``experiments``).
        root_config_folder: a PB config folder; ``None`` = pml_ext's bundled configs.
        config_names: ``{category: [file names]}`` (``--config_general default with_256_batch``).
        overrides: ``{key: value}`` from ``--key <yaml>`` (flags allowed).
        resume_training: ``"latest"`` to continue a saved experiment; the saved config is
            used, with ``overrides`` merged on top (e.g. a larger ``num_epochs_train``).
        dataset_root: where local data sets live (CUB200, Cars196, SOP, NpzFeatures).
        registry: resolves class names (default: the one :func:`pml_ext.register` fills).
        config: an already merged config to run instead of reading ``root_config_folder``
            (a Bayesian search trial); ignored when resuming (the saved one is used).
        evaluate: PB's ``--evaluate``: test the saved models of a finished experiment
            without training (:mod:`.evaluate_only`); ``"best"`` or ``"latest"`` models.
    """

    def __init__(self, experiment_name: str, root_experiment_folder: str = "experiments",
                 root_config_folder: str | None = None, config_names: Mapping | None = None,
                 overrides: Mapping | None = None, resume_training: str | None = None,
                 dataset_root: str = "datasets", registry: Registry | None = None,
                 config: ExperimentConfig | None = None, evaluate: str | None = None):
        check_experiment_name(experiment_name)
        check_root_folder(root_experiment_folder)
        if resume_training not in (None, "latest"):
            raise ValueError(f"resume_training must be 'latest' or None, got {resume_training!r}")
        if evaluate not in (None,) + EVALUATE_CHOICES:
            raise ValueError(f"evaluate must be one of {', '.join(EVALUATE_CHOICES)}, got {evaluate!r}")
        self.experiment_name = experiment_name
        self.experiment_folder = os.path.abspath(os.path.join(root_experiment_folder, experiment_name))
        self.root_config_folder = root_config_folder
        self.config_names = dict(config_names or {})
        self.overrides = list(overrides.items() if hasattr(overrides, "items") else (overrides or []))
        self.resume_training = resume_training
        self.dataset_root = dataset_root
        self.registry = registry or default_registry
        self.config = config
        self.evaluate = evaluate
        self.rank, self.world_size = 0, 1
        self.objects: dict[str, dict] = {}  # per split scheme: what the run built, for inspection

    # ---- config ---------------------------------------------------------------------------

    def read_config(self) -> ExperimentConfig:
        """The merged config: the root folder's files, or the saved ones when resuming."""
        configs_folder = os.path.join(self.experiment_folder, "configs")
        if self.resume_training or self.evaluate:
            saved = ExperimentConfig.load_saved(configs_folder)
            return ConfigReader.apply_overrides(saved, self.overrides)
        failed_start = os.path.isdir(configs_folder) and not has_started(self.experiment_folder)
        if os.path.isdir(configs_folder) and not failed_start:
            raise ValueError(f"experiment_name: {self.experiment_folder} already exists; pass "
                             f"--resume_training latest to continue it, or choose another name")
        if self.config is not None:
            config = ConfigReader.apply_overrides(self.config, self.overrides)
        else:
            config = ConfigReader(self.root_config_folder).read(self.config_names, self.overrides)
        if failed_start:  # only once the new config reads: an earlier start that never got to a checkpoint
            LOGGER.warning("%s: an earlier start stopped before its first checkpoint; starting afresh",
                           self.experiment_folder)
            remove_failed_start(self.experiment_folder)
        return config

    # PB's general keys with defaults, type-checked (config_checks)
    general = staticmethod(general_settings)

    # PB's splits_to_eval + reference_set -> PML 2.x's [(query, [references])] (split_checks)
    map_splits_to_eval = staticmethod(map_splits_to_eval)

    # ---- data -----------------------------------------------------------------------------

    def datasets(self, config: ExperimentConfig, factory: ObjectFactory, raw_train: bool = False):
        """``(train-time dataset, eval-time dataset)``: the same data, with each split's transforms
        (``raw_train``: training items untransformed, for a trainer that augments them itself)."""
        spec = config.require("dataset", "config_dataset")
        source = config.source_of("dataset")
        name, kwargs = self.registry.parse_spec(spec, source, "dataset")
        cls = self.registry.get("dataset", name, source, "dataset")
        injected = {}
        if "dataset_root" not in kwargs and ObjectFactory.accepts(cls, "dataset_root"):
            injected["dataset_root"] = self.dataset_root
        if getattr(cls, "needs_image_transforms", False):
            train = self.registry.build("dataset", spec, source, "dataset",
                                        transform=None if raw_train else factory.image_transform("train"),
                                        **injected)
            evaluation = self.registry.build("dataset", spec, source, "dataset",
                                             transform=factory.image_transform("eval"), **injected)
            return train, evaluation
        if config.get("transforms"):
            LOGGER.info("transforms: not applied, %s is a feature data set", name)
        dataset = self.registry.build("dataset", spec, source, "dataset", **injected)
        return dataset, dataset

    # ---- the run --------------------------------------------------------------------------

    def run(self) -> dict:
        """Train and test every split scheme; returns a summary.

        Returns:
            ``{"experiment_folder", "schemes": {name: {"start_epoch", "last_epoch",
            "best_epoch", "wall_time"}}, "rows": [metrics per epoch], "table": str,
            "plots": [paths], "notes": [registry notes]}`` (on rank 0; other ranks get the
            scheme info only).
        """
        from ...utils.distributed import init_from_env, is_distributed, rank_and_world_size, run_device

        # Before init_from_env: an already initialised group (spawned workers), else torchrun's variables.
        self.rank, self.world_size = rank_and_world_size() if is_distributed() else \
            (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))
        # One writer per folder: the lock comes before the "already exists" check, so two fresh starts cannot race.
        lock = ExperimentLock(self.experiment_folder).acquire() if self.rank == 0 else None
        handler = self._start_logging()
        restore_threads, general, distributed, wrote_config = (lambda: None), None, False, False
        try:
            config = self.read_config()
            reject_search_keys(config)
            general = self.general(config)
            self.registry.notes.clear()  # notes (e.g. shadowed classes) are logged once per run
            distributed = init_from_env(timeout_seconds=general["distributed_timeout_seconds"],
                                        device=general["device"])
            self.rank, self.world_size = rank_and_world_size()
            context = RunContext(self.rank, self.world_size, distributed, run_device(general["device"]),
                                 general["seed"], self.experiment_name, self.experiment_folder,
                                 self.resume_training, self.evaluate)
            restore_threads = self._set_threads(general["num_threads"])
            if distributed:  # every rank has read the config before rank 0 writes the experiment's folder
                torch.distributed.barrier()
            if self.rank == 0 and not self.evaluate:
                self._save_config(config)
                wrote_config = not self.resume_training
            return self._run(config, general, context)
        except BaseException as exc:
            log_fatal_error(handler, exc)
            if wrote_config:
                remove_failed_start(self.experiment_folder)
            if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, RunInterrupted):
                raise RunInterrupted(interrupted_at(self.experiment_folder, self.objects),
                                     has_started(self.experiment_folder)) from None
            message = describe_collective_failure(exc, self.rank, general["distributed_timeout_seconds"],
                                                  general["distributed_eval_timeout_seconds"]) \
                if isinstance(exc, RuntimeError) and distributed and "rank " not in str(exc)[:8] else None
            if message:
                raise RuntimeError(message) from exc
            raise
        finally:
            restore_threads()
            if handler is not None:
                LOGGER.removeHandler(handler)
                handler.close()
            if lock is not None:
                lock.release()

    @staticmethod
    def _set_threads(num_threads: int | None):
        """Set torch's and FAISS's thread counts for the run; returns a function restoring them."""
        stack = contextlib.ExitStack()
        stack.enter_context(thread_count(num_threads))
        return stack.close

    def _start_logging(self):
        if self.rank != 0:
            return None
        os.makedirs(self.experiment_folder, exist_ok=True)
        handler = logging.FileHandler(os.path.join(self.experiment_folder, "run.log"))
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        LOGGER.addHandler(handler)
        if LOGGER.level == logging.NOTSET or LOGGER.level > logging.INFO:
            LOGGER.setLevel(logging.INFO)
        return handler

    def _save_config(self, config: ExperimentConfig) -> None:
        folder = os.path.join(self.experiment_folder, "configs")
        if not self.resume_training:
            config.save(folder)
        elif self.overrides:
            import yaml

            n = len([f for f in os.listdir(folder) if f.startswith("resume_")])
            with open(os.path.join(folder, f"resume_{n}.yaml"), "w") as f:
                yaml.safe_dump(dict(self.overrides), f, sort_keys=False)
        for category, files in config.sources.items():
            LOGGER.info("%s: %s", category, ", ".join(files))

    def _run(self, config: ExperimentConfig, general: dict, context: RunContext) -> dict:
        for key, category in REQUIRED_KEYS.items():  # fail before any slow step
            config.require(key, category)
        unknown = sorted(set(config.flat) - USED_KEYS)
        if unknown:
            LOGGER.warning("unknown top-level keys (ignored; a typo?): %s", ", ".join(unknown))
        ignored = [k for k in IGNORED_KEYS if config.get(k)]
        if ignored:
            LOGGER.info("PB keys without effect in pml_ext's runner: %s", ", ".join(ignored))
        self.trainer_rules = PBTrainerRules(config, self.registry)
        self.trainer_rules.check()
        factory = ObjectFactory(config, self.registry)
        seed_epoch(context.seed)
        train_data, eval_data = self.datasets(config, factory, raw_train=self.trainer_rules.unsupervised)
        manager, schemes = split_schemes(self.registry, config, train_data)
        _, tester_kwargs = self.registry.parse_spec(config.require("tester", "config_eval"), config.source_of("tester"),
                                                    "tester")
        check_split_classes(schemes, manager.labels_of(train_data), self.map_splits_to_eval(
            general["splits_to_eval"], tester_kwargs.get("reference_set", "compared_to_self"),
            list(next(iter(schemes.values()))), config.source_of("splits_to_eval")),
            config.source_of("splits_to_eval"), getattr(manager, "num_training_partitions", None))
        report = None
        summary: dict[str, Any] = {"experiment_folder": self.experiment_folder, "schemes": {}}
        for scheme_name, indices in schemes.items():
            LOGGER.info("Split scheme %s: %s", scheme_name,
                        ", ".join(f"{k}={len(v)} samples" for k, v in indices.items()))
            scheme = SchemeRun(context, self.registry, self.trainer_rules, config, general, factory, manager,
                               scheme_name, indices, train_data, eval_data)
            self.objects[scheme_name] = scheme.build()
            info, scheme_report = scheme.run()
            summary["schemes"][scheme_name] = info
            if scheme_report is not None:
                report = report or ExperimentReport(scheme_report["primary_metric"])
                report.add(scheme_name, scheme_report["accuracies"], scheme_report["losses"],
                           scheme_report["settings"])
        summary["notes"] = list(self.registry.notes)
        if self.rank == 0 and report is not None:
            summary["rows"] = report.rows()
            summary["table"] = report.table()
            summary["plots"] = report.write(self.experiment_folder)
            LOGGER.info("Metrics per epoch:\n%s", summary["table"])
        return summary

    # ---- pieces ---------------------------------------------------------------------------
