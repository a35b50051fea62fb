"""Reality-check tuning on glyphs: every method tuned alike on val, then tested over seeds.

Musgrave et al. 2020's protocol with pml_ext's own machinery: each method file in
``pml_ext/configs/comparison/`` holds its ``search:`` ranges (margins, learning rates, the
batch layout m x classes within the batch of 64); ``--stage search`` runs pml_ext's Bayesian
search (Optuna, ``BayesianSearch``) over them with the same number of trials for every method,
each trial a full main-job training run (10 epochs of 128 batches) scored on the val split
(a tenth of the training characters, class-disjoint); the test split is not evaluated.
``--stage best`` prints each search's best parameters (they were then written into the method
files by hand, so the bundled files are the tuned ones). ``--stage final`` trains the method
files as they are now, for each seed and trunk, and reports test MAP@R at the epoch val chose.

Everything resumes: a search continues from its ``optuna.db`` and an interrupted trial from its
last checkpoint; a final run continues from its checkpoint, and finished runs are kept in
``results/tuning_runs.json`` (written to a temporary name and renamed) and skipped. Two
processes may run side by side on disjoint ``--methods`` (one writer per experiment folder).

    python benchmarks/bench_tuning.py --stage search --trials 12 --folder tuning --num_threads 1 \\
        --methods pml_triplet_semihard pml_contrastive ...
    python benchmarks/bench_tuning.py --stage best --folder tuning
    python benchmarks/bench_tuning.py --stage final --seeds 0 1 2 --trunk glyph_pool_cnn_small --folder tuning
    python benchmarks/bench_tuning.py --stage report        # results/tuning.md from tuning_runs.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import statistics
import sys
import time

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RUNS = ROOT / "benchmarks" / "results" / "tuning_runs.json"
RESULTS = ROOT / "benchmarks" / "results" / "tuning.md"
MAIN_TRUNK = "glyph_pool_cnn_small"


def _write_atomically(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def method_files(keys: list[str] | None) -> list[dict]:
    """The bundled method files (all ten when ``keys`` is empty), each with its ``search`` block."""
    from pml_ext.runner.report.comparison_runner import ComparisonRunner

    every = sorted(f[:-5] for f in os.listdir(ROOT / "pml_ext" / "configs" / "comparison") if f.endswith(".yaml"))
    return ComparisonRunner(methods=keys or every, dataset="glyphs").methods()


def config_names(trunk: str) -> dict:
    from pml_ext.runner.objects.main_job_datasets import MAIN_JOB_DATASETS

    return {**MAIN_JOB_DATASETS["glyphs"][0], "config_models": [trunk]}


def search(methods: list[dict], folder: pathlib.Path, trials: int, num_threads: int | None) -> None:
    """One Bayesian search per method, ``trials`` finished trials each, val split only. The methods
    take turns, one trial each, so a study stopped at any point has given every method the same
    number of trials, give or take one."""
    threads = [("num_threads", num_threads)] if num_threads else []
    for target in range(1, trials + 1):
        for method in methods:
            overrides = (list(method["config"].items()) + list(method["search"].items())
                         + [("splits_to_eval", ["val"]), ("check_untrained_accuracy", False)] + threads)
            search_until(method["key"], folder / "search", target, overrides)


def own_settings(method: dict) -> dict:
    """The method file's own value of each parameter its search covers (``{name: value}``): the
    settings it had before tuning, run as one more trial of every search."""
    from pml_ext.runner.config.config_reader import ConfigReader
    from pml_ext.runner.config.search_space import search_space

    names = config_names(MAIN_TRUNK)
    plain = ConfigReader().read(names, list(method["config"].items())).categories
    ranged = ConfigReader().read(names, list(method["config"].items()) + list(method["search"].items()))
    values = {}
    for p in search_space(ranged):
        node = plain[p.category]
        for key in p.path:
            node = node[key]
        values[p.name] = float(node) if p.flag in ("BAYESIAN", "LOG_BAYESIAN") else node
    return values


def add_own_settings(methods: list[dict], folder: pathlib.Path, trials: int, num_threads: int | None) -> None:
    """After ``trials`` drawn trials, each search runs the file's own settings as trial ``trials``
    (so a tuned file is never worse on val than the untuned one was)."""
    import optuna

    threads = [("num_threads", num_threads)] if num_threads else []
    for method in methods:
        db = folder / "search" / method["key"] / "optuna.db"
        study = optuna.load_study(study_name=method["key"], storage=f"sqlite:///{db}")
        if not any(t.user_attrs.get("own settings") for t in study.trials):
            study.enqueue_trial(own_settings(method), user_attrs={"own settings": True})
        overrides = (list(method["config"].items()) + list(method["search"].items())
                     + [("splits_to_eval", ["val"]), ("check_untrained_accuracy", False)] + threads)
        search_until(method["key"], folder / "search", trials + 1, overrides)


def search_until(key: str, root: pathlib.Path, target: int, overrides: list) -> None:
    """Continue ``key``'s search until it has ``target`` finished trials. A trial that fails (say,
    a learning rate that diverges) is marked failed by the search and another one is drawn."""
    from pml_ext.runner.report.bayesian_search import BayesianSearch

    for attempt in range(3):
        started = (root / key / "configs").is_dir()
        try:
            result = BayesianSearch(key, target, root_experiment_folder=str(root), config_names=config_names(MAIN_TRUNK),
                                    overrides=overrides, resume_training="latest" if started else None).run()
            last = result["trials"][-1]
            print(f"{key}: trial {last['number']} val {last['value']:.4f}; best {result['best']['value']:.4f}",
                  flush=True)
            return
        except (RuntimeError, ValueError, FloatingPointError) as error:
            print(f"{key}: a trial failed ({error}); drawing another", flush=True)


def best(methods: list[dict], folder: pathlib.Path) -> str:
    """Each search's best trial and its parameters, as markdown."""
    import optuna

    lines = ["| method | trials (failed) | best val MAP@R | median val MAP@R | best parameters |",
             "|---|---|---|---|---|"]
    for method in methods:
        db = folder / "search" / method["key"] / "optuna.db"
        if not db.is_file():
            continue
        study = optuna.load_study(study_name=method["key"], storage=f"sqlite:///{db}")
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        failed = sum(t.state == optuna.trial.TrialState.FAIL for t in study.trials)
        top = max(done, key=lambda t: t.value)
        params = ", ".join(f"{k.split('.', 1)[-1]}={v:.3g}" for k, v in top.params.items())
        lines.append(f"| {method['name']} | {len(done)} ({failed}) | {top.value:.4f} | "
                     f"{statistics.median(t.value for t in done):.4f} | {params} |")
    return "\n".join(lines)


def apply_best(methods: list[dict], folder: pathlib.Path) -> None:
    """Write each search's best values (3 significant digits) into its method file's ``config:``:
    in place where the file sets the key, else as a plain key (the learning rates, m)."""
    import optuna
    from pml_ext.runner.config.config_reader import ConfigReader
    from pml_ext.runner.config.search_space import search_space

    for method in methods:
        db = folder / "search" / method["key"] / "optuna.db"
        study = optuna.load_study(study_name=method["key"], storage=f"sqlite:///{db}")
        params = study.best_trial.params
        ranged = ConfigReader().read(config_names(MAIN_TRUNK), list(method["config"].items())
                                     + list(method["search"].items()))
        spec = yaml.safe_load(open(method["path"]))
        for p in search_space(ranged):
            value = params[p.name]
            value = float(f"{value:.3g}") if isinstance(value, float) else value
            _set(spec["config"], p.path, value)
        text = open(method["path"]).read()
        head = text[:text.index("config:")]
        tail = text[text.index("# The ranges the tuning searched"):]
        body = ("# Tuned: the best of its search's trials on the val split (benchmarks/RESULTS.md, \"Tuned comparison\").\n"
                + yaml.safe_dump({"config": spec["config"]}, sort_keys=False, default_flow_style=None, width=100))
        _write_atomically(pathlib.Path(method["path"]), head + body + tail)


def _set(config: dict, path: tuple, value) -> None:
    """Set ``path`` (its first key a config key, maybe flagged in the file) to ``value``."""
    top = next((k for k in config if k.split("~")[0] == path[0]), path[0])
    node = config.setdefault(top, {})
    for key in path[1:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value


def load_runs() -> list[dict]:
    return json.loads(RUNS.read_text()) if RUNS.is_file() else []


def final(methods: list[dict], folder: pathlib.Path, trunk: str, seeds: list[int], num_threads: int | None) -> None:
    """Train each method file as bundled now, per seed, on ``trunk``; record test metrics at the
    epoch val chose. Finished runs are skipped; an interrupted one resumes from its checkpoint."""
    for seed in seeds:
        for method in methods:
            run = {"trunk": trunk, "seed": seed, "key": method["key"], "method": method["name"]}
            record_run(RUNS, run, folder, pathlib.Path("final", trunk, f"seed{seed}", method["key"]),
                       list(method["config"].items()), num_threads)


def record_run(runs_file: pathlib.Path, run: dict, root: pathlib.Path, relative: pathlib.Path, overrides: list,
               num_threads: int | None, extras=None) -> None:
    """Train ``overrides`` on ``run["trunk"]`` with ``run["seed"]`` in ``root / relative`` (resuming
    it when started), then append ``run`` with the test metrics (and val's MAP@R and P@1) at the
    epoch val chose to ``runs_file`` (the folder recorded relative to ``root``, which is the
    user's own). Skipped when ``runs_file`` already holds a run with the same identity.
    ``extras(summary, experiment_folder) -> dict`` adds a caller's own figures to the row."""
    experiment = root / relative
    from pml_ext.runner.report.comparison_runner import ComparisonRunner
    from pml_ext.runner.run.experiment_runner import ExperimentRunner

    recorded = json.loads(runs_file.read_text()) if runs_file.is_file() else []
    if any(all(r.get(k) == v for k, v in run.items()) for r in recorded):
        return
    started = (experiment / "configs").is_dir()
    start, load = time.time(), os.getloadavg()[0]
    threads = [("num_threads", num_threads)] if num_threads else []
    summary = ExperimentRunner(experiment.name, root_experiment_folder=str(experiment.parent),
                               config_names=config_names(run["trunk"]),
                               overrides=overrides + [("seed", run["seed"]), ("check_untrained_accuracy", False)]
                               + threads, resume_training="latest" if started else None).run()
    chosen = next((s.get("best_epoch") for s in summary["schemes"].values()), None)
    test = next((r for r in ComparisonRunner.test_rows(summary) if r["epoch"] == chosen), {})
    val = next((r for r in ComparisonRunner.test_rows(summary, "val") if r["epoch"] == chosen), {})
    row = {**run, "chosen epoch": chosen, **{m: test.get(m) for m in ("P@1", "R@4", "MAP@R", "NMI")},
           "val MAP@R": val.get("MAP@R"), "val P@1": val.get("P@1"),
           **(extras(summary, experiment) if extras else {}),
           "wall time (s)": round(time.time() - start, 1), "resumed": started, "load at start": round(load, 2),
           "threads": num_threads or 2, "date": datetime.date.today().isoformat(),
           "folder": relative.as_posix()}
    print(json.dumps(row), flush=True)
    recorded = json.loads(runs_file.read_text()) if runs_file.is_file() else []
    _write_atomically(runs_file, json.dumps(recorded + [row], indent=1))


def _mean_sd(values: list[float], digits: int = 3) -> str:
    values = [v for v in values if v is not None]
    if len(values) < 2:
        return f"{values[0]:.{digits}f}" if values else "-"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def final_table(trunk: str) -> str:
    runs = [r for r in load_runs() if r["trunk"] == trunk]
    order = {m["key"]: i for i, m in enumerate(method_files(None))}
    lines = ["| method | seeds | MAP@R | P@1 | R@4 | NMI | wall time (s) |", "|---|---|---|---|---|---|---|"]
    for key in sorted({r["key"] for r in runs}, key=lambda k: order.get(k, 99)):
        rows = [r for r in runs if r["key"] == key]
        cells = [_mean_sd([r[m] for r in rows]) for m in ("MAP@R", "P@1", "R@4", "NMI")]
        lines.append(f"| {rows[0]['method']} | {len(rows)} | " + " | ".join(cells)
                     + f" | {_mean_sd([r['wall time (s)'] for r in rows], 1)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stage", choices=["search", "own", "best", "apply", "final", "report"], required=True,
                        help="own: after --trials drawn trials, one more trial with each file's own settings")
    parser.add_argument("--methods", nargs="*", default=None, help="method file names (default: all)")
    parser.add_argument("--folder", default="tuning", help="where searches and final runs are written")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--trunk", default=MAIN_TRUNK, help="a bundled config_models file, for --stage final")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--num_threads", type=int, default=None, help="torch threads per process (default: 2)")
    args = parser.parse_args()
    folder = pathlib.Path(args.folder).resolve()
    methods = method_files(args.methods)
    if args.stage == "search":
        search(methods, folder, args.trials, args.num_threads)
    elif args.stage == "own":
        add_own_settings(methods, folder, args.trials, args.num_threads)
    elif args.stage == "apply":
        apply_best(methods, folder)
    elif args.stage == "best":
        print(best(methods, folder))
    elif args.stage == "final":
        final(methods, folder, args.trunk, args.seeds, args.num_threads)
    else:
        trunks = sorted({r["trunk"] for r in load_runs()})
        print("\n\n".join(f"{t}:\n{final_table(t)}" for t in trunks))


if __name__ == "__main__":
    main()
