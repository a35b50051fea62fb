"""What ``pml-ext run --dataset NAME`` means: a bundled benchmark, or a dataset class.

A bundled benchmark selects bundled config files (data set, split, model, budget); a dataset
class only replaces the config's ``dataset`` key. The benchmark names are matched without
regard to case, so ``--dataset Glyphs`` is the glyph benchmark, never the ``Glyphs`` class
with its own defaults (a different, twice as large benchmark).
"""
from __future__ import annotations

import difflib
import os

from ..config.config_error import ConfigError
from ..config.config_reader import BUNDLED_CONFIG_FOLDER

__all__ = ["MAIN_JOB_DATASETS", "NO_BENCHMARK", "choose_dataset", "glyph_trunks", "choose_trunk"]

# The bundled config files each main-job benchmark selects, and how the table names it.
MAIN_JOB_DATASETS = {
    "glyphs": ({"config_dataset": ["glyphs"], "config_models": ["glyph_pool_cnn_small"], "config_general": ["default", "glyphs"],
                "config_loss_and_miners": ["default", "glyphs"]},
               "glyphs, class-disjoint: train on one half of the characters, test on the other"),
    "quick": ({"config_dataset": ["glyphs", "glyphs_quick"], "config_models": ["glyph_pool_cnn_small"],
               "config_general": ["default", "glyphs", "glyphs_quick"], "config_loss_and_miners": ["default", "glyphs"]},
              "glyphs, quick: 400 characters, half trained on, half tested, 4 short epochs"),
    "digits": ({}, "digits, train classes 0-4, test classes 5-9"),
}
GLYPH_BENCHMARKS = ("glyphs", "quick")  # the ones a --trunk can change
NO_BENCHMARK = "none"  # the main job on --root_config_folder's own defaults


def choose_dataset(name: str, registry, with_experiment_name: bool) -> tuple[str | None, str | None]:
    """``--dataset name`` -> ``(benchmark, dataset class)``, exactly one of them set.

    ``benchmark`` is a key of :data:`MAIN_JOB_DATASETS` or :data:`NO_BENCHMARK`; ``dataset
    class`` a name the registry resolves as a dataset. Raises ``ConfigError`` naming the
    valid choices for an unknown name, and for a benchmark name given with an experiment
    name (a single experiment selects config files instead).
    """
    benchmarks = list(MAIN_JOB_DATASETS) + [NO_BENCHMARK]
    if name.lower() in benchmarks:
        benchmark = name.lower()
        if with_experiment_name:
            files = " ".join(f"--{category} {' '.join(names)}"
                             for category, names in MAIN_JOB_DATASETS.get(benchmark, ({}, ""))[0].items())
            raise ConfigError("command line", "--dataset", f"{name!r} names the main job's bundled benchmark "
                              f"{benchmark}; a single experiment selects config files instead"
                              f"{': ' + files if files else ' (digits is the bundled default)'}, or replaces the "
                              f"data set with --dataset~OVERRIDE~ '{{ClassName: {{kwargs}}}}'")
        return benchmark, None
    try:
        registry.get("dataset", name)
        return None, name
    except ConfigError:
        pass
    classes = registry.known_names("dataset")
    by_lower = {n.lower(): n for n in benchmarks + classes}
    close = [by_lower[n] for n in difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.6)]
    raise ConfigError("command line", "--dataset", f"unknown data set {name!r}"
                      + (f" (closest: {', '.join(close)})" if close else "")
                      + f"; give a bundled benchmark ({', '.join(MAIN_JOB_DATASETS)}, or {NO_BENCHMARK}: the "
                        f"defaults of your --root_config_folder), case-insensitive, or a dataset class "
                        f"({', '.join(classes)}; pml_ext.register adds your own)")


def glyph_trunks() -> list[str]:
    """The bundled glyph trunks: the ``config_models/glyph_*.yaml`` files, by name."""
    folder = os.path.join(BUNDLED_CONFIG_FOLDER, "config_models")
    return sorted(f[:-5] for f in os.listdir(folder) if f.startswith("glyph_") and f.endswith(".yaml"))


def choose_trunk(name: str, benchmark: str | None) -> str:
    """``--trunk name`` -> the bundled ``config_models`` file the glyph main job then uses.

    Case-insensitive; raises ``ConfigError`` naming the choices for an unknown name, and for a
    main job on another benchmark (the glyph trunks take 32x32 images).
    """
    if benchmark not in GLYPH_BENCHMARKS:
        raise ConfigError("command line", "--trunk", f"selects a glyph trunk for the glyph main job, not for "
                          f"{benchmark or 'a dataset class'}; a single experiment selects its model file "
                          f"with --config_models NAME")
    trunks = glyph_trunks()
    if name.lower() not in trunks:
        raise ConfigError("command line", "--trunk", f"unknown trunk {name!r}; give one of {', '.join(trunks)} "
                          f"(pml_ext/configs/config_models; benchmarks/RESULTS.md, \"Glyph trunks\", compares them)")
    return name.lower()
