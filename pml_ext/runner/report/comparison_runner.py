"""The main job: ``pml-ext run`` with no experiment name compares methods on glyphs (or digits).

Each method is one YAML file in ``pml_ext/configs/comparison/`` (a new method is one new
file)::

    name: "PML baseline: TripletMarginLoss + semi-hard TripletMarginMiner"
    order: 10                 # table order
    requires: []              # pml_ext names that must import, else the method is skipped
    main_job: false           # optional: run only when named (--methods KEY); default true
    search: {...}             # optional: the ranges its tuning searched (benchmarks/bench_tuning.py)
    for_dataset: {digits: {...}}   # optional: overrides for one bundled benchmark only
    config:                   # merged onto the bundled defaults like --key <yaml> overrides
      loss_funcs~OVERRIDE~: {metric_loss: {TripletMarginLoss: {margin: 0.2}}}

Every method runs with the same bundled configs (the data set of :data:`MAIN_JOB_DATASETS`,
the same trunk, optimizer, sampler, epochs and seed), so the table compares only what the
method files change. Two reference rows need no training: the untrained network (epoch 0,
the same seeded initialisation for every method) and the raw pixels, L2-normalised.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Iterable, Mapping

from ..config.config_error import ConfigError
from ..config.config_reader import BUNDLED_CONFIG_FOLDER, ConfigReader
from ..objects.main_job_datasets import MAIN_JOB_DATASETS
from ..objects.registry import Registry
from ..run.epoch_updater import resolve_attribute
from ..run.experiment_runner import ExperimentRunner
from ..state.experiment_lock import ExperimentLock
from ..state.main_job_folder import MainJobFolders

__all__ = ["ComparisonRunner"]

LOGGER = logging.getLogger("pml_ext.runner")
TABLE_COLUMNS = ("P@1", "R@4", "MAP@R", "NMI")


class ComparisonRunner:
    """Run every available comparison method and tabulate the final test metrics.

    Args:
        root_experiment_folder: each run writes to a new ``<root>/main_job_runs/<time>/<method>``;
            ``<root>/main_job`` links to the latest finished run (:mod:`.main_job_folder`).
        methods_folder: the method YAML files (default: the bundled ones).
        methods: run only these method file names (stems); default all.
        overrides: ``--key <yaml>`` overrides applied to every method after its own config
            (e.g. ``{"num_epochs_train": 1}``); a mapping or a list of ``(key, value)``.
        root_config_folder: the config folder the methods modify (default: bundled).
        registry: class-name resolution (default: the global one).
        dataset: a key of :data:`MAIN_JOB_DATASETS` (``"glyphs"``, the default, or ``"digits"``
            for a quick run); with a ``root_config_folder`` of your own, ``None`` uses its defaults.
    """

    def __init__(self, root_experiment_folder: str = "experiments", methods_folder: str | None = None,
                 methods: Iterable[str] | None = None, overrides: Mapping | Iterable | None = None,
                 root_config_folder: str | None = None, registry: Registry | None = None,
                 dataset: str | None = "glyphs", trunk: str | None = None):
        if dataset is not None and dataset not in MAIN_JOB_DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(MAIN_JOB_DATASETS)}, got {dataset!r}")
        if dataset is not None and root_config_folder is not None and MAIN_JOB_DATASETS[dataset][0]:
            raise ValueError("dataset: the main job's data sets select bundled config files; with your own "
                             "root_config_folder, pass dataset=None (the command line: --dataset none)")
        self.dataset = dataset
        self.config_names = dict(MAIN_JOB_DATASETS[dataset][0]) if dataset else {}
        if trunk is not None:  # a bundled config_models file (main_job_datasets.choose_trunk checks the name)
            self.config_names["config_models"] = [trunk]
        self.title = MAIN_JOB_DATASETS[dataset][1] if dataset else "your config folder's data set"
        self.folders = MainJobFolders(root_experiment_folder)
        self.folder = self.folders.link  # this run's own folder once it runs
        self.methods_folder = methods_folder or os.path.join(BUNDLED_CONFIG_FOLDER, "comparison")
        self.only = list(methods) if methods else None
        items = overrides.items() if hasattr(overrides, "items") else (overrides or [])
        self.overrides = list(items)
        self.root_config_folder = root_config_folder
        self.registry = registry
        self.rank = 0

    def methods(self) -> list[dict]:
        """The method files as ``{"key", "name", "order", "requires", "config", "missing"}``: those
        named in ``methods``, else every file without ``main_job: false`` (the extra references,
        such as PML's contrastive loss, run when named)."""
        import pml_ext

        out = []
        for filename in sorted(os.listdir(self.methods_folder)):
            if not filename.endswith(".yaml"):
                continue
            path = os.path.join(self.methods_folder, filename)
            spec = ConfigReader.load_yaml(path)
            for key in ("name", "config"):
                if key not in spec:
                    raise ConfigError(path, key, "required key is missing")
            if not isinstance(spec["config"], dict):
                raise ConfigError(path, "config", "must be a mapping of --key overrides")
            requires = list(spec.get("requires") or [])
            if not isinstance(spec.get("search") or {}, dict):
                raise ConfigError(path, "search", "must be a mapping of --key overrides holding search ranges")
            for_dataset = spec.get("for_dataset") or {}
            if not isinstance(for_dataset, dict) or not all(
                    k in MAIN_JOB_DATASETS and isinstance(v, dict) for k, v in for_dataset.items()):
                raise ConfigError(path, "for_dataset", f"must map bundled benchmark names "
                                  f"({', '.join(MAIN_JOB_DATASETS)}) to --key overrides, got {for_dataset!r}")
            if not isinstance(spec.get("main_job", True), bool):
                raise ConfigError(path, "main_job", f"must be true or false, got {spec['main_job']!r}")
            out.append({"key": filename[:-5], "name": str(spec["name"]), "order": spec.get("order", 100),
                        "requires": requires, "config": spec["config"], "path": path,
                        "missing": [r for r in requires if not hasattr(pml_ext, r)],
                        "main_job": spec.get("main_job", True), "search": spec.get("search") or {},
                        "for_dataset": for_dataset})
        if self.only is not None:
            unknown = sorted(set(self.only) - {m["key"] for m in out})
            if unknown:
                raise ValueError(f"methods: unknown method {unknown[0]!r}; the methods are "
                                 f"{', '.join(m['key'] for m in out)}")
            out = [m for m in out if m["key"] in self.only]
        else:
            out = [m for m in out if m["main_job"]]
        return sorted(out, key=lambda m: (m["order"], m["key"]))

    def check(self, methods: list[dict]) -> None:
        """Read and check every method's config before anything is written (a typo in an
        override fails here, not after the first methods have trained)."""
        from ..run.config_checks import check_config

        self.folders.check()
        for method in methods:
            if not method["missing"]:
                config = ConfigReader(self.root_config_folder).read(self.config_names, self._overrides(method, True))
                check_config(config, self.registry)

    def settings(self, method: dict) -> list:
        """A method file's ``--key`` overrides on this runner's benchmark: its ``config:``, then
        its ``for_dataset`` entry for the benchmark (settings tuned on glyphs that another
        benchmark cannot take, such as 16 seed pairs on digits' 5 classes)."""
        return list(method["config"].items()) + list(method.get("for_dataset", {}).get(self.dataset, {}).items())

    def _overrides(self, method: dict, check_untrained: bool) -> list:
        skip_untrained = [] if check_untrained else [("check_untrained_accuracy", False)]
        return self.settings(method) + skip_untrained + self.overrides

    def run(self) -> dict:
        """Run the methods; returns ``{"rows", "table", "plot", "skipped", "folder", "histories"}``.

        ``histories[method]`` holds the per-epoch ``metrics`` rows (epoch 0 = untrained), the
        sampler's recorded statistics (``sampler_history``) and the controlled settings
        (``settings_history``)."""
        from ...utils.distributed import broadcast_object, init_from_env, rank_and_world_size

        methods = self.methods()
        self.check(methods)
        init_from_env()  # under torchrun: only rank 0 locks, makes the run's folder and writes the table and plot
        self.rank = rank_and_world_size()[0]
        # one main job per root folder at a time; the other ranks of this job are not writers
        with ExperimentLock(self.folders.runs) if self.rank == 0 else contextlib.nullcontext():
            self.folder = broadcast_object(self.folders.new_run() if self.rank == 0 else None)
            try:
                result = self._run_methods(methods)
            except BaseException:
                if self.rank == 0:
                    shown = "still shows the last finished run" if os.path.lexists(self.folders.link) else \
                        "is not made until a run finishes"
                    LOGGER.warning("The main job stopped; %s %s. This run's folders (each method's run.log) "
                                   "are in %s", self.folders.link, shown, self.folder)
                raise
            if self.rank == 0:
                self.folders.publish(self.folder)
            return result

    def _run_methods(self, methods: list[dict]) -> dict:
        from ..run.run_output import PROGRESS

        rows, curves, skipped, untrained, raw, histories = [], {}, [], None, None, {}
        for number, method in enumerate(methods, 1):
            if method["missing"]:
                skipped.append(f"{method['name']} (needs pml_ext.{', pml_ext.'.join(method['missing'])})")
                LOGGER.info("Skipping %s: not available yet", skipped[-1])
                continue
            # Every method starts from the same seeded initialisation, so the untrained network is
            # evaluated once, by the first method (two evaluations saved per later method).
            first = not rows
            runner, summary, row = self._run_method(method, check_untrained=first)
            scheme_rows = [r for r in self.test_rows(summary) if r["epoch"] >= 0]
            if first:
                untrained = next((r for r in scheme_rows if r["epoch"] == 0), None)
                raw = self.raw_pixels(runner)
            elif untrained is not None and not any(r["epoch"] == 0 for r in scheme_rows):
                scheme_rows = [untrained] + scheme_rows
            rows.append(row)
            PROGRESS.info("[%d/%d] %s: %d epochs, %.1f s", number, len(methods), method["name"], row["epochs"],
                          row["wall time (s)"])
            curves[method["name"]] = ([r["epoch"] for r in scheme_rows], [r.get("MAP@R") for r in scheme_rows])
            histories[method["name"]] = {"metrics": scheme_rows, **{
                key: [h for info in summary["schemes"].values() for h in info.get(key, [])]
                for key in ("sampler_history", "settings_history")}}
        if untrained is not None:
            rows.insert(0, {"method": "untrained network (epoch 0, the same for every method)",
                            **{c: untrained.get(c) for c in TABLE_COLUMNS}, "epochs": 0, "chosen epoch": 0,
                            "wall time (s)": None,
                            "notes": ""})
        if raw is not None:
            rows.insert(0, {"method": "raw pixels, L2-normalised (no network)", **raw, "epochs": 0,
                            "chosen epoch": None, "wall time (s)": None, "notes": ""})
        table = self.table(rows)
        plot = self.plot(curves, raw["MAP@R"] if raw else None) if curves and self.rank == 0 else None
        if rows and self.rank == 0:
            import pandas as pd

            from ..state.checkpoint_store import atomic_write

            atomic_write(os.path.join(self.folder, "comparison.csv"),
                         lambda f: pd.DataFrame(rows).to_csv(f, index=False), mode="w")
        return {"rows": rows, "table": table, "plot": plot, "skipped": skipped, "folder": self.folder,
                "histories": histories}

    def _run_method(self, method: dict, check_untrained: bool) -> tuple[ExperimentRunner, dict, dict]:
        """Train one method in a fresh folder; returns its runner, summary and table row."""
        LOGGER.info("Main job: %s", method["name"])
        start = time.time()
        runner = ExperimentRunner(method["key"], root_experiment_folder=self.folder,
                                  root_config_folder=self.root_config_folder, config_names=self.config_names,
                                  overrides=self._overrides(method, check_untrained), registry=self.registry)
        summary = runner.run()
        # the test metrics of the epoch chosen on the val split (the test split chooses nothing)
        chosen = next((s.get("best_epoch") for s in summary["schemes"].values()), None)
        final = next((r for r in self.test_rows(summary) if r["epoch"] == chosen), {})
        row = {"method": method["name"], **{c: final.get(c) for c in TABLE_COLUMNS},
               "epochs": max((s["last_epoch"] for s in summary["schemes"].values()), default=0),
               "chosen epoch": chosen,
               "wall time (s)": round(time.time() - start, 1), "notes": self.notes(runner, summary)}
        return runner, summary, row

    @staticmethod
    def test_rows(summary: dict, split: str = "test") -> list[dict]:
        """``split``'s metrics per epoch (``{"epoch", "P@1", ...}``) of the first split scheme."""
        from ..state.experiment_report import ExperimentReport

        for scheme, info in summary.get("schemes", {}).items():
            report = ExperimentReport("")
            report.add(scheme, info.get("split_histories", {}).get(split, {}), {}, [])
            return report.rows()
        return []

    @staticmethod
    def notes(runner: ExperimentRunner, summary: dict) -> str:
        """What a method really did: the share of really mined triplets after the warm-up and the
        final controlled settings (empty for methods without a mining sampler or controller)."""
        parts = []
        for info in summary["schemes"].values():
            shares = [h["mined_share_in_epoch"] for h in info.get("sampler_history", [])
                      if "mined_share_in_epoch" in h]
            mined = [s for s in shares if s > 0]
            if shares:
                parts.append(f"really mined: {sum(mined) / max(len(mined), 1):.2f} of triplets in "
                             f"{len(mined)}/{len(shares)} epochs")
        for objects in runner.objects.values():
            for name, (controller, module, attribute) in (objects.get("controllers") or {}).items():
                owner, leaf = resolve_attribute(module, attribute)
                parts.append(f"{attribute} {float(getattr(owner, leaf)):.3g} at the end")
            break
        return "; ".join(parts)

    @staticmethod
    def raw_pixels(runner: ExperimentRunner) -> dict | None:
        """The test split's metrics with the data itself (flattened, L2-normalised) as the embedding,
        scored by the run's own accuracy calculator; ``None`` when the run kept no test split."""
        import torch

        from ...utils.inference import compute_embeddings
        from ..state.experiment_report import _SHORT_NAMES

        objects = next(iter(runner.objects.values()), None)
        if not objects or objects.get("tester") is None or "test" not in objects["eval_sets"]:
            return None
        embeddings, labels = compute_embeddings(torch.nn.Flatten(), objects["eval_sets"]["test"], batch_size=1024)
        embeddings = torch.nn.functional.normalize(embeddings.float(), dim=1)
        accuracies = objects["tester"].accuracy_calculator.get_accuracy(embeddings, labels, embeddings, labels,
                                                                        ref_includes_query=True)
        named = {_SHORT_NAMES.get(k, k): v for k, v in accuracies.items()}
        return {c: named.get(c) for c in TABLE_COLUMNS}

    @staticmethod
    def table(rows: list[dict]) -> str:
        """The comparison as aligned text within 120 columns: method (wrapped), the metrics, epochs,
        the chosen epoch and the wall time; each method's notes below the table."""
        from .text_table import text_table

        if not rows:
            return "(no method ran)"

        def number(digits: int):
            return lambda v: "-" if v is None or v != v else f"{v:.{digits}f}"

        formats = {**{c: number(4) for c in TABLE_COLUMNS}, "epochs": number(0), "chosen epoch": number(0),
                   "wall time (s)": number(1)}
        return text_table(rows, "method", list(formats), formats, notes_column="notes")

    def plot(self, curves: dict, raw_map_at_r: float | None = None) -> str:
        """``comparison.png``: test MAP@R per epoch, one line per method (epoch 0 = untrained)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        from ..state.checkpoint_store import atomic_write

        fig, ax = plt.subplots(figsize=(8, 5))
        for name, (epochs, values) in curves.items():
            ax.plot(epochs, values, marker="o", label=name)
        if raw_map_at_r is not None:
            ax.axhline(raw_map_at_r, color="gray", linestyle="--", label="raw pixels, L2-normalised")
        ax.set_title(f"Main job: {self.title}", fontsize=9)
        ax.set_xlabel("epoch (0 = untrained network)")
        ax.set_ylabel("test MAP@R (classes unseen in training)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)  # outside the curves
        path = os.path.join(self.folder, "comparison.png")
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"))
        plt.close(fig)
        return path
