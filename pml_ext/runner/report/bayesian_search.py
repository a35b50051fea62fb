"""PB's Bayesian hyper-parameter search (``--bayes_opt_iters N``), on Optuna.

Folder (PB's layout)::

    <root_experiment_folder>/<experiment_name>/
        configs/                    the merged config, search ranges included
        optuna.db                   the study (SQLite): every trial's parameters and value
        <experiment_name><i>/       trial i: an ordinary experiment folder, resumable
        <experiment_name>_reproduction<j>/   the best trial's parameters with seed + 1 + j
        bayes_opt_summary.csv, bayes_opt_summary.md, bayes_opt_plot.png, best_parameters.yaml

A trial's value is its validation accuracy (the primary metric at its best epoch, mean over
split schemes); the test split never takes part in choosing. The sampler is Optuna's TPE,
re-seeded before each trial with ``seed + trial number``, so a resumed search asks for
the same parameters as an uninterrupted one. ``--resume_training latest`` continues a
killed search: finished trials are kept, an interrupted one is resumed in its own folder.
"""
from __future__ import annotations

import glob
import logging
import os
import shutil
from typing import Any, Mapping

import yaml

from ..config.config_error import ConfigError
from ..config.config_reader import ConfigReader
from ..config.experiment_config import ExperimentConfig
from ..config.search_space import search_space, substitute
from ..run.experiment_runner import ExperimentRunner
from ..state.run_guard import has_started

__all__ = ["BayesianSearch"]

LOGGER = logging.getLogger("pml_ext.runner")
VAL_SPLIT_FIX = ("ClassDisjointSplitManager makes one with val_fraction: 0.25 (a held-out quarter of each "
                 "training class's samples, with num_training_partitions: 1) or with num_training_partitions > 1 "
                 "(class-disjoint partitions)")


class BayesianSearch:
    """Search the config's ``~BAYESIAN~`` ranges, then reproduce the best trial.

    Args:
        experiment_name, root_experiment_folder, root_config_folder, config_names,
            overrides, dataset_root, registry: as for :class:`ExperimentRunner`.
        bayes_opt_iters: the number of trials (>= 1).
        reproductions: runs of the best trial's parameters with other seeds (>= 0).
        resume_training: ``"latest"`` to continue a search folder.
    """

    def __init__(self, experiment_name: str, bayes_opt_iters: int, reproductions: int = 0,
                 root_experiment_folder: str = "experiments", root_config_folder: str | None = None,
                 config_names: Mapping | None = None, overrides=None, resume_training: str | None = None,
                 dataset_root: str = "datasets", registry=None):
        for name, value, low in (("bayes_opt_iters", bayes_opt_iters, 1), ("reproductions", reproductions, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        self.experiment_name = experiment_name
        self.folder = os.path.abspath(os.path.join(root_experiment_folder, experiment_name))
        self.bayes_opt_iters, self.reproductions = bayes_opt_iters, reproductions
        self.runner_kwargs = {"root_experiment_folder": self.folder, "dataset_root": dataset_root,
                              "registry": registry}
        self.root_config_folder, self.config_names = root_config_folder, dict(config_names or {})
        self.overrides = list(overrides.items() if hasattr(overrides, "items") else (overrides or []))
        self.resume_training = resume_training

    # ---- config -------------------------------------------------------------------------

    def read_config(self) -> ExperimentConfig:
        configs = os.path.join(self.folder, "configs")
        if self.resume_training:
            saved = ExperimentConfig.load_saved(configs)
            self._check_same_config(saved)
            return saved
        if os.path.isdir(configs):
            raise ValueError(f"experiment_name: {self.folder} already exists; pass --resume_training latest to "
                             f"continue the search, or choose another name")
        return ConfigReader(self.root_config_folder).read(self.config_names, self.overrides)

    def _check_same_config(self, saved: ExperimentConfig) -> None:
        """A resumed search keeps the config it started with; a command that would change it is
        refused, never silently ignored."""
        if not (self.overrides or self.config_names or self.root_config_folder):
            return
        given = ConfigReader(self.root_config_folder).read(self.config_names, self.overrides).flat
        changed = sorted(k for k in set(saved.flat) | set(given) if saved.flat.get(k) != given.get(k))
        if changed:
            raise ConfigError("command line", "--resume_training",
                              f"{self.folder} searches another config (this command changes {', '.join(changed)}); "
                              f"a search continues with the config it started with: repeat its command, or "
                              f"start a new search under another --experiment_name")

    def check_selects_on_validation(self, base: ExperimentConfig, space: list) -> None:
        """Trials are compared on ``val``, never on test. Checked on the data, with every range at
        its low end, so any split manager that makes a ``val`` split qualifies."""
        from ..run.config_checks import check_config, split_schemes
        from ..objects.object_factory import ObjectFactory
        from ..run.run_hooks import hook_container_spec

        config = substitute(base, space, {p.name: p.low for p in space})
        runner = ExperimentRunner(self.experiment_name, config=config, **self.runner_kwargs)
        general, registry = check_config(config, runner.registry), runner.registry
        train, _ = runner.datasets(config, ObjectFactory(config, registry), raw_train=True)
        _, schemes = split_schemes(registry, config, train)
        made = list(next(iter(schemes.values())))
        if "val" not in made:
            name, _ = registry.parse_spec(config.get("split_manager"), config.source_of("split_manager"))
            raise ConfigError(config.source_of("split_manager"), f"split_manager.{name}",
                              f"makes no 'val' split (only {', '.join(made)}), and a Bayesian search chooses its "
                              f"trials on val, never on test. {VAL_SPLIT_FIX}")
        _, tester = registry.parse_spec(config.require("tester", "config_eval"), config.source_of("tester"), "tester")
        splits = runner.map_splits_to_eval(general["splits_to_eval"], tester.get("reference_set", "compared_to_self"),
                                           made, config.source_of("splits_to_eval"))
        chosen = hook_container_spec(registry, config, splits)[1]["validation_split_name"]
        if chosen != "val":
            raise ConfigError(config.source_of("hook_container"), "hook_container.validation_split_name",
                              f"is {chosen!r}; a Bayesian search chooses its trials on val: set "
                              f"validation_split_name: val (and keep val in splits_to_eval)")

    # ---- the search ---------------------------------------------------------------------

    def run(self) -> dict:
        """Run (or continue) the trials and reproductions; returns a summary.

        Returns:
            ``{"trials": [{"number", "folder", "params", "value"}], "best": trial,
            "reproductions": [{"folder", "value"}], "table": str, "plot": path}``.
        """
        import optuna  # noqa: F401  (the optuna extra: missing, the search stops before writing anything)

        base = self.read_config()
        space = search_space(base)
        if not space:
            raise ConfigError(self.folder, "", "--bayes_opt_iters needs at least one ~BAYESIAN~ / ~LOG_BAYESIAN~ / "
                                               "~INT_BAYESIAN~ range or ~CHOICE~ list in the config")
        self.check_selects_on_validation(base, space)
        if self.resume_training:
            return self._search(base, space)
        base.save(os.path.join(self.folder, "configs"))  # only a valid search leaves a folder
        try:
            return self._search(base, space)
        except Exception:  # not a kill (KeyboardInterrupt): an interrupted trial stays resumable
            self._remove_failed_start()
            raise

    def _search(self, base: ExperimentConfig, space: list) -> dict:
        import optuna

        seed = int(base.get("seed", 0))
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(study_name=self.experiment_name, direction="maximize", load_if_exists=True,
                                    storage=f"sqlite:///{os.path.join(self.folder, 'optuna.db')}")
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            LOGGER.info("Bayesian search: resuming interrupted trial %d", trial.number)
            self._finish(study, trial.number, trial.user_attrs["folder"], trial.params, base, space, resume=True)
        while len(self._complete(study)) < self.bayes_opt_iters:
            study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials))
            trial = study.ask({p.name: p.distribution() for p in space})
            folder = f"{self.experiment_name}{trial.number}"
            trial.set_user_attr("folder", folder)
            self._finish(study, trial.number, folder, trial.params, base, space, resume=False)
        trials = [{"number": t.number, "folder": t.user_attrs["folder"], "params": dict(t.params),
                   "value": float(t.value)} for t in self._complete(study)]
        best = max(trials, key=lambda t: t["value"])
        self._write_best(best)
        reproduced = [self._reproduce(best, base, space, j, seed + 1 + j) for j in range(self.reproductions)]
        from .bayesian_report import write_report

        table, plot = write_report(self.folder, trials, best, reproduced, space)
        LOGGER.info("Bayesian search (%d trials, validation accuracy):\n%s", len(trials), table)
        return {"trials": trials, "best": best, "reproductions": reproduced, "table": table, "plot": plot}

    def _remove_failed_start(self) -> None:
        """After a fresh search failed before any trial got to a checkpoint: remove its configs and
        study, so the corrected command starts a new search (trial folders keep their run.log)."""
        trials = [os.path.join(self.folder, n) for n in os.listdir(self.folder)]
        if any(has_started(t) for t in trials if os.path.isdir(t)):
            return
        shutil.rmtree(os.path.join(self.folder, "configs"))
        for path in glob.glob(os.path.join(self.folder, "optuna.db*")):
            os.remove(path)
        LOGGER.info("The search failed before its first trial's first checkpoint: removed its configs and "
                    "optuna.db; the corrected command starts a new search")

    @staticmethod
    def _complete(study) -> list:
        import optuna

        return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))

    def _finish(self, study, number: int, folder: str, params: dict, base, space, resume: bool) -> None:
        import optuna

        try:
            value = self._run_one(folder, substitute(base, space, params), resume)
        except Exception:
            # A bad trial (e.g. a diverging learning rate) is marked failed; a kill
            # (KeyboardInterrupt, SIGKILL) leaves it running, to be resumed in its folder.
            study.tell(number, state=optuna.trial.TrialState.FAIL)
            raise
        study.tell(number, value)

    def _run_one(self, folder: str, config: ExperimentConfig, resume: bool, seed: int | None = None) -> float:
        """One sub-experiment's validation accuracy (continuing it when its folder exists)."""
        started = os.path.isdir(os.path.join(self.folder, folder, "configs"))
        overrides = [("seed", seed)] if seed is not None and not started else []
        summary = ExperimentRunner(folder, config=config, overrides=overrides,
                                   resume_training="latest" if (resume and started) else None,
                                   **self.runner_kwargs).run()
        values = [s.get("best_accuracy") for s in summary["schemes"].values()]
        if not values or any(v is None for v in values):
            raise RuntimeError(f"{folder}: no validation accuracy was recorded (is 'val' in splits_to_eval?)")
        return float(sum(values) / len(values))

    def _write_best(self, best: dict) -> None:
        path = os.path.join(self.folder, "best_parameters.yaml")
        with open(path + ".tmp", "w") as f:
            yaml.safe_dump({"best_sub_experiment_name": best["folder"], "best_parameters": best["params"],
                            "validation_accuracy": best["value"]}, f, sort_keys=False)
        os.replace(path + ".tmp", path)

    def _reproduce(self, best: dict, base, space, j: int, seed: int) -> dict[str, Any]:
        """Reproduction ``j`` of the best trial's parameters with ``seed`` (kept once finished)."""
        folder = f"{self.experiment_name}_reproduction{j}"
        done = os.path.join(self.folder, folder, "reproduction.yaml")
        if os.path.isfile(done):
            with open(done) as f:
                return yaml.safe_load(f)
        value = self._run_one(folder, substitute(base, space, best["params"]), resume=True, seed=seed)
        result = {"folder": folder, "seed": seed, "value": value}
        with open(done + ".tmp", "w") as f:
            yaml.safe_dump(result, f)
        os.replace(done + ".tmp", done)
        return result
