"""``pml-ext`` / ``python -m pml_ext``: run powerful-benchmarker configs, or the main job.

    pml-ext run --experiment_name NAME [--root_config_folder DIR] [--root_experiment_folder DIR]
                [--config_<category> name ...] [--resume_training latest] [--dataset_root DIR]
                [--register_module MODULE ...] [--verbose] [--key <yaml> ...]
                [--evaluate [best|latest]]                  # test saved models, no training
                [--bayes_opt_iters N [--reproductions M]]  # Bayesian search over ~BAYESIAN~ ranges
                [--methods KEY]                             # start from a main-job method file's config
    pml-ext run [--dataset glyphs|quick|digits|CLASS] [--methods NAME ...] [--verbose] [--key <yaml> ...]
                [--trunk glyph_cnn|glyph_pool_cnn|glyph_pool_cnn_small]  # the main job (no experiment name)
    pml-ext run --quick                                      # the main job on 400 characters (about 30 s)
    pml-ext run --help                                       # this text

By default the console shows progress, warnings and the final table (everything is in each
experiment's run.log); --verbose also shows every log message and PML's own bars. A user error
(a bad path, device, config value or file) ends as one `error: ...` line with exit status 2.

``--key <yaml>`` overrides a config key; the value is YAML and may span several shell
words (``--trainer~APPLY~2 {batch_size: 256}``); PB's flags ~OVERRIDE~, ~APPLY~N,
~SWAP~N and ~DELETE~ work in keys at any depth. The general keys most often given:

    --num_epochs_train N   --save_interval N   --patience N|null   --seed N   --device cpu|cuda
    --num_threads N        torch and FAISS threads (the glyph main job uses 2; on a busy machine: 1)
    --splits_to_eval val test   --check_untrained_accuracy true|false
    --distributed_timeout_seconds S   --distributed_eval_timeout_seconds S   (under torchrun)
    --embedding_bank {}    epoch updates read the training passes' embeddings, not a second pass

and whole objects: --trainer, --models, --optimizers, --loss_funcs, --mining_funcs, --sampler,
--controllers, --tester, --hook_container, --dataset {Name: {...}}, --split_manager.
PB's --evaluate_ensemble and --reproduce_results are refused, with the reason. Ctrl-C stops a
run with one line naming the command that resumes it. Docs: docs/runner.md.
"""
from __future__ import annotations

import importlib
import re
import sys
from typing import Sequence

import yaml

USAGE = __doc__.replace("``", "")
OPTIONS = {"experiment_name", "root_config_folder", "root_experiment_folder", "dataset_root", "resume_training",
           "trunk"}
# ``--dataset NAME`` (one word) is a bundled benchmark or a dataset class (.runner.objects.main_job_datasets);
# a YAML mapping is PB's override of the config key ``dataset`` (``--dataset {CUB200: {...}}``).
_DATASET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
LIST_OPTIONS = {"register_module", "methods"}
FLAGS = {"verbose", "quick"}
INT_OPTIONS = {"bayes_opt_iters", "reproductions"}
# PB flags this runner does not have, and why (docs/runner.md)
UNSUPPORTED_OPTIONS = {
    "evaluate_ensemble": "PB's ensembles of the split schemes' models are not supported; use --evaluate",
    "reproduce_results": "not supported; rerun the saved configs with --root_config_folder <experiment>/configs",
}


def parse_run_args(argv: Sequence[str]) -> tuple[dict, dict, list]:
    """``argv`` after ``run`` -> ``(options, config_names, overrides)``.

    ``overrides`` is a list of ``(key, value)`` in command-line order; values are parsed as
    YAML after joining the words that follow the key. Raises ``ConfigError`` on bad YAML.
    """
    from .runner.config.config_error import ConfigError
    from .runner.config.config_merge import OPTION_WORD

    groups: list[tuple[str, list[str]]] = []
    for word in argv:
        if OPTION_WORD.match(word):
            groups.append((word[2:], []))
        elif not groups:
            raise ConfigError("command line", word, "expected --key before a value")
        else:
            groups[-1][1].append(word)
    options: dict = {}
    config_names: dict = {}
    overrides: list = []
    for key, words in groups:
        if key in ("help", "h"):
            options["help"] = True
        elif key in FLAGS:
            if words:
                raise ConfigError("command line", f"--{key}", f"takes no value, got {' '.join(words)!r}")
            options[key] = True
        elif key in UNSUPPORTED_OPTIONS:
            raise ConfigError("command line", f"--{key}", UNSUPPORTED_OPTIONS[key])
        elif key == "evaluate":
            if len(words) > 1 or (words and words[0] not in ("best", "latest")):
                raise ConfigError("command line", "--evaluate", f"takes nothing, best or latest, got {words}")
            options["evaluate"] = words[0] if words else "best"
        elif key in INT_OPTIONS:
            if len(words) != 1 or not words[0].isdigit():
                raise ConfigError("command line", f"--{key}", f"takes one integer, got {words}")
            options[key] = int(words[0])
        elif key == "dataset" and len(words) == 1 and _DATASET_NAME.match(words[0]):
            options["dataset"] = words[0]  # resolved once --register_module ran: a benchmark or a class
            overrides.append((key, words[0]))
        elif key == "dataset" and not words:
            raise ConfigError("command line", "--dataset", "needs a bundled benchmark name, a dataset class "
                                                           "or a {ClassName: {kwargs}} mapping")
        elif key in OPTIONS:
            if len(words) != 1:
                raise ConfigError("command line", f"--{key}", f"takes one value, got {len(words)}")
            options[key] = words[0]
        elif key in LIST_OPTIONS or key.startswith("config_"):
            names = _names(words, key)
            if key.startswith("config_"):
                config_names[key] = names
            else:
                options[key] = names
        elif key == "splits_to_eval" and words and not words[0].startswith("["):
            overrides.append((key, _names(words, key)))  # PB's argparse form: --splits_to_eval val test
        else:
            text = " ".join(words)
            try:
                value = yaml.safe_load(text) if words else True
            except yaml.YAMLError as exc:
                detail = getattr(exc, "problem", None) or str(exc).splitlines()[0]
                raise ConfigError("command line", f"--{key}", f"bad YAML {text!r}: {detail}") from None
            overrides.append((key, value))
    return options, config_names, overrides


def _names(words: list[str], key: str) -> list[str]:
    from .runner.config.config_error import ConfigError

    if len(words) == 1 and words[0].startswith("["):
        parsed = yaml.safe_load(words[0])
        return [str(w) for w in parsed]
    if not words:
        raise ConfigError("command line", f"--{key}", "needs at least one name")
    return [w.strip(",") for w in words]


def run(argv: Sequence[str]) -> int:
    from .runner.report.comparison_runner import ComparisonRunner
    from .runner.run.experiment_runner import ExperimentRunner
    from .runner.objects.main_job_datasets import NO_BENCHMARK, choose_trunk

    from .runner.config.config_error import ConfigError
    from .runner.run.run_output import configure_output

    options, config_names, overrides = parse_run_args(argv)
    if options.get("help"):
        print(USAGE)
        return 0
    configure_output(bool(options.get("verbose")))
    for module in options.get("register_module", []):
        try:
            importlib.import_module(module)  # the module calls pml_ext.register(...) on import
        except ImportError as exc:
            raise ConfigError("command line", "--register_module", f"cannot import {module!r}: {exc}") from exc
    root = options.get("root_experiment_folder", "experiments")
    benchmark = _choose_dataset(options, overrides)
    if "trunk" in options and "experiment_name" in options:
        raise ConfigError("command line", "--trunk", "selects the glyph main job's trunk; a single experiment "
                          "selects its model file with --config_models NAME (e.g. glyph_pool_cnn)")
    if "experiment_name" in options and "methods" in options:
        overrides[:0] = _method_overrides(options["methods"])
    if "bayes_opt_iters" in options or "reproductions" in options:
        return _bayesian_search(options, config_names, overrides, root)
    if "experiment_name" in options:
        summary = ExperimentRunner(
            options["experiment_name"], root_experiment_folder=root,
            root_config_folder=options.get("root_config_folder"), config_names=config_names,
            overrides=overrides, resume_training=options.get("resume_training"),
            dataset_root=options.get("dataset_root", "datasets"), evaluate=options.get("evaluate")).run()
        if "table" in summary:  # rank 0
            print(summary["table"])
            print(f"Experiment folder: {summary['experiment_folder']}")
        return 0
    if config_names or "resume_training" in options:
        raise ValueError("--config_* and --resume_training need --experiment_name; without it, "
                         "`pml-ext run` is the main job")
    if benchmark is None and "dataset" not in options:
        benchmark = "glyphs" if "root_config_folder" not in options else NO_BENCHMARK
    trunk = choose_trunk(options["trunk"], benchmark) if "trunk" in options else None
    runner = ComparisonRunner(root_experiment_folder=root, methods=options.get("methods"), overrides=overrides,
                              root_config_folder=options.get("root_config_folder"),
                              dataset=None if benchmark in (None, NO_BENCHMARK) else benchmark, trunk=trunk)
    if benchmark is None:
        settings = "your config folder" if "root_config_folder" in options else "the bundled digits configs"
        runner.title = f"{options['dataset']} (a dataset class), with the other settings of {settings}"
    result = runner.run()
    if runner.rank != 0:  # under torchrun, rank 0 prints the table
        return 0
    print(f"\nMain job: {runner.title} (test split, at the epoch each method's val split chose)")
    print(result["table"])
    for skipped in result["skipped"]:
        print(f"skipped: {skipped}")
    if result["plot"]:
        print(f"Plot: {result['plot']}")
    return 0


def _choose_dataset(options: dict, overrides: list) -> str | None:
    """The main-job benchmark ``--dataset`` names (its placeholder override removed), else ``None``
    (no ``--dataset``, or a dataset class, which stays an override of the config key)."""
    from .runner.config.config_error import ConfigError
    from .runner.objects.main_job_datasets import choose_dataset
    from .runner.objects.registry import default_registry

    if options.get("quick"):  # --quick is --dataset quick
        if "dataset" in options or "experiment_name" in options:
            raise ConfigError("command line", "--quick", "is the main job on the quick glyph benchmark; it takes "
                              "no --dataset and no --experiment_name")
        return "quick"
    if "dataset" not in options:
        return None
    benchmark, _ = choose_dataset(options["dataset"], default_registry, "experiment_name" in options)
    if benchmark is not None:
        overrides.remove(("dataset", options["dataset"]))
    return benchmark


def _method_overrides(names: list[str]) -> list:
    """``--methods KEY`` with ``--experiment_name``: the bundled method file's config, merged before
    the command line's overrides (one experiment, or a search over ranges added to it)."""
    from .runner.report.comparison_runner import ComparisonRunner
    from .runner.config.config_error import ConfigError

    if len(names) != 1:
        raise ConfigError("command line", "--methods", f"with --experiment_name, give one method file, got {names}")
    (method,) = ComparisonRunner(methods=names, dataset=None).methods()
    return list(method["config"].items())


def _bayesian_search(options: dict, config_names: dict, overrides: list, root: str) -> int:
    from .runner.report.bayesian_search import BayesianSearch

    if "experiment_name" not in options or "bayes_opt_iters" not in options:
        raise ValueError("--bayes_opt_iters (and --reproductions) need --experiment_name and --bayes_opt_iters")
    if "evaluate" in options:
        raise ValueError("--evaluate tests one experiment; run it on a trial's folder instead of the search")
    result = BayesianSearch(options["experiment_name"], options["bayes_opt_iters"], options.get("reproductions", 0),
                            root_experiment_folder=root, root_config_folder=options.get("root_config_folder"),
                            config_names=config_names, overrides=overrides,
                            resume_training=options.get("resume_training"),
                            dataset_root=options.get("dataset_root", "datasets")).run()
    print(result["table"])
    print(f"Best trial: {result['best']['folder']} (validation accuracy {result['best']['value']:.4f})")
    print(f"Plot: {result['plot']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``pml-ext``)."""
    from .runner.state.run_guard import log_fatal_error_to
    from .runner.run.run_output import print_user_error

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] != "run":
        print(f"error: unknown command {argv[0]!r}\n{USAGE}", file=sys.stderr)
        return 2
    try:
        return run(argv[1:])
    except KeyboardInterrupt as exc:  # Ctrl-C: one line, where it stopped and how to continue
        from .runner.run.run_interrupt import INTERRUPTED_STATUS, interrupt_line
        from .runner.run.run_output import console_rank

        if console_rank() == 0:
            print(interrupt_line(exc, argv[1:]), file=sys.stderr)
        return INTERRUPTED_STATUS
    except (ValueError, OSError) as exc:  # ConfigError, CheckpointError, ExperimentLocked, paths, encodings
        log_fatal_error_to(_experiment_folder(argv[1:]), exc)
        return print_user_error(exc)


def _experiment_folder(argv: Sequence[str]) -> str | None:
    """The experiment folder named on the command line, for errors raised before the run started."""
    try:
        options = parse_run_args(argv)[0]
    except ValueError:
        return None
    if "experiment_name" not in options:
        return None
    import os

    return os.path.join(options.get("root_experiment_folder", "experiments"), options["experiment_name"])


def _release_process_groups() -> None:
    """Destroy the process groups a distributed run made before this process exits: left to the
    interpreter's exit, a gloo group's threads were torn down in an order that aborted a rank now
    and then ("terminate called without an active exception", exit -6 under torchrun)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    try:
        status = main()
    finally:
        _release_process_groups()
    sys.exit(status)
