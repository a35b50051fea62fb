"""PB's search ranges in a merged config: ``lr~LOG_BAYESIAN~: [0.000001, 1]``.

``~BAYESIAN~`` is a uniform float range, ``~LOG_BAYESIAN~`` a log-uniform one and
``~INT_BAYESIAN~`` an integer range; each holds ``[low, high]``. ``~CHOICE~`` (pml_ext's, not
PB's) holds two or more values to choose among, for settings that only some values make valid
(``m~CHOICE~: [2, 4, 8]``: MPerClassSampler's m must divide the batch size). A parameter's name
is its dotted path (``optimizers.metric_loss_optimizer.RMSprop.lr``).
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any, Iterator

from .config_error import ConfigError
from .experiment_config import ExperimentConfig

__all__ = ["SearchParameter", "search_space", "substitute", "reject_search_keys"]

_SEARCH_KEY = re.compile(r"^(?P<name>.+)~(?P<flag>BAYESIAN|LOG_BAYESIAN|INT_BAYESIAN|CHOICE)~$")


@dataclass(frozen=True)
class SearchParameter:
    """One range: where it sits (``category``, ``path`` of plain keys) and its bounds (for
    ``CHOICE``: ``low`` and ``high`` are the smallest and largest of ``choices``)."""

    category: str
    path: tuple[str, ...]
    flag: str
    low: float
    high: float
    choices: tuple = ()

    @property
    def name(self) -> str:
        return ".".join(self.path)

    def distribution(self):
        """The Optuna distribution of this range."""
        import optuna

        if self.flag == "CHOICE":
            return optuna.distributions.CategoricalDistribution(self.choices)
        if self.flag == "INT_BAYESIAN":
            return optuna.distributions.IntDistribution(int(self.low), int(self.high))
        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.flag == "LOG_BAYESIAN")


def _walk(node: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], str, str, Any]]:
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        match = _SEARCH_KEY.match(str(key))
        if match:
            yield path, match.group("name"), match.group("flag"), value
        else:
            yield from _walk(value, path + (str(key),))


def search_space(config: ExperimentConfig) -> list[SearchParameter]:
    """Every search range of ``config``, validated (errors name the file and key)."""
    out = []
    for category, values in config.categories.items():
        for parent, name, flag, bounds in _walk(values, ()):
            source = f"{category} ({', '.join(config.sources.get(category, []))})"
            key = ".".join(parent + (f"{name}~{flag}~",))
            if flag == "CHOICE":
                out.append(_choice(category, parent + (name,), bounds, source, key))
                continue
            ok = isinstance(bounds, (list, tuple)) and len(bounds) == 2 and all(
                isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds) and bounds[0] < bounds[1]
            if not ok:
                raise ConfigError(source, key, f"a search range is [low, high] with low < high, got {bounds!r}")
            if flag == "LOG_BAYESIAN" and bounds[0] <= 0:
                raise ConfigError(source, key, f"a log range needs low > 0, got {bounds!r}")
            if flag == "INT_BAYESIAN" and not all(float(b).is_integer() for b in bounds):
                raise ConfigError(source, key, f"an integer range needs integer bounds, got {bounds!r}")
            out.append(SearchParameter(category, parent + (name,), flag, float(bounds[0]), float(bounds[1])))
    return out


def _choice(category: str, path: tuple[str, ...], choices: Any, source: str, key: str) -> SearchParameter:
    ok = isinstance(choices, (list, tuple)) and len(choices) >= 2 and all(
        isinstance(c, (int, float)) and not isinstance(c, bool) for c in choices) and len(set(choices)) == len(choices)
    if not ok:
        raise ConfigError(source, key, f"a choice is a list of two or more distinct numbers, got {choices!r}")
    return SearchParameter(category, path, "CHOICE", min(choices), max(choices), tuple(choices))


def substitute(config: ExperimentConfig, space: list[SearchParameter], values: dict[str, Any]) -> ExperimentConfig:
    """A copy of ``config`` with each range replaced by ``values[parameter.name]``."""
    categories = copy.deepcopy(config.categories)
    for p in space:
        node = categories[p.category]
        for key in p.path[:-1]:
            node = node[key]
        node.pop(f"{p.path[-1]}~{p.flag}~")
        value = values[p.name]
        node[p.path[-1]] = value if p.flag == "CHOICE" else int(value) if p.flag == "INT_BAYESIAN" else float(value)
    return ExperimentConfig(categories, config.sources)


def reject_search_keys(config: ExperimentConfig) -> None:
    """A single experiment cannot hold a range: say how to search it."""
    space = search_space(config)
    if space:
        p = space[0]
        raise ConfigError(f"{p.category} ({', '.join(config.sources.get(p.category, []))})",
                          f"{p.name}~{p.flag}~", "a search range needs a Bayesian search: add "
                                                 "--bayes_opt_iters N (and optionally --reproductions M)")
