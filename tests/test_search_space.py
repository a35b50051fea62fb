"""PB's three search-range flags, from the config key to Optuna's distribution and back into the config.

Oracles: hand-written configs whose ranges, distributions and substituted values are read off
the keys (PB's docs: ``~BAYESIAN~`` uniform float, ``~LOG_BAYESIAN~`` log-uniform float,
``~INT_BAYESIAN~`` integer, each ``[low, high]``), and Optuna's own sampling of the returned
distributions (every draw inside the range; an integer range gives integers).
"""
import optuna
import pytest

from pml_ext.runner import ConfigError, ExperimentConfig
from pml_ext.runner.config.search_space import search_space, substitute

CATEGORIES = {
    "loss_funcs": {"metric_loss": {"TripletMarginLoss": {"margin~BAYESIAN~": [0.01, 0.5]}}},
    "trainer": {"MetricLossOnly": {"batch_size~INT_BAYESIAN~": [16, 64], "iterations_per_epoch": 3}},
    "optimizers": {"trunk_optimizer": {"Adam": {"lr~LOG_BAYESIAN~": [1e-6, 1e-2]}}},
}


def config(categories=CATEGORIES) -> ExperimentConfig:
    return ExperimentConfig(categories, {k: [f"{k}.yaml"] for k in categories})


def test_each_flag_gives_its_dotted_name_bounds_and_optuna_distribution():
    space = {p.name: p for p in search_space(config())}
    assert sorted(space) == ["MetricLossOnly.batch_size", "metric_loss.TripletMarginLoss.margin",
                             "trunk_optimizer.Adam.lr"]
    margin, batch, lr = (space["metric_loss.TripletMarginLoss.margin"], space["MetricLossOnly.batch_size"],
                         space["trunk_optimizer.Adam.lr"])
    assert (margin.flag, margin.low, margin.high) == ("BAYESIAN", 0.01, 0.5)
    assert margin.distribution() == optuna.distributions.FloatDistribution(0.01, 0.5, log=False)
    assert (batch.flag, batch.low, batch.high) == ("INT_BAYESIAN", 16.0, 64.0)
    assert batch.distribution() == optuna.distributions.IntDistribution(16, 64)
    assert lr.distribution() == optuna.distributions.FloatDistribution(1e-6, 1e-2, log=True)


def test_optuna_draws_stay_in_range_and_integer_ranges_give_integers():
    space = search_space(config())
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    draws = [study.ask({p.name: p.distribution() for p in space}).params for _ in range(200)]
    margins = [d["metric_loss.TripletMarginLoss.margin"] for d in draws]
    batches = [d["MetricLossOnly.batch_size"] for d in draws]
    assert all(0.01 <= m <= 0.5 for m in margins) and len(set(margins)) == 200   # a float range
    assert all(isinstance(b, int) and 16 <= b <= 64 for b in batches)
    # 200 uniform draws of 49 integers: both halves of the range are hit (each misses with p = 2^-200)
    assert min(batches) < 40 < max(batches)
    # uniform, not log-uniform: about half the margins lie above the midpoint 0.255 (log-uniform: 0.19 of them)
    assert 0.4 < sum(m > 0.255 for m in margins) / 200 < 0.6


def test_substitute_writes_each_value_under_its_plain_key_with_the_flags_type():
    base = config()
    space = search_space(base)
    values = {"metric_loss.TripletMarginLoss.margin": 0.25, "MetricLossOnly.batch_size": 32.0,
              "trunk_optimizer.Adam.lr": 1e-4}
    out = substitute(base, space, values)
    assert out.categories == {
        "loss_funcs": {"metric_loss": {"TripletMarginLoss": {"margin": 0.25}}},
        "trainer": {"MetricLossOnly": {"batch_size": 32, "iterations_per_epoch": 3}},
        "optimizers": {"trunk_optimizer": {"Adam": {"lr": 1e-4}}},
    }
    batch = out.categories["trainer"]["MetricLossOnly"]["batch_size"]
    margin = out.categories["loss_funcs"]["metric_loss"]["TripletMarginLoss"]["margin"]
    assert type(batch) is int and type(margin) is float
    assert "margin~BAYESIAN~" in base.categories["loss_funcs"]["metric_loss"]["TripletMarginLoss"]  # a copy
    assert search_space(out) == []


@pytest.mark.parametrize("key, bounds, message", [
    ("margin~BAYESIAN~", [0.5, 0.1], "low < high"),
    ("margin~BAYESIAN~", [0.1, "x"], "low < high"),
    ("k~INT_BAYESIAN~", [1.5, 4], "an integer range needs integer bounds"),
    ("k~INT_BAYESIAN~", [4], "low < high"),
])
def test_bad_ranges_name_the_key(key, bounds, message):
    bad = config({"loss_funcs": {"metric_loss": {"TripletMarginLoss": {key: bounds}}}})
    with pytest.raises(ConfigError, match=rf"{key.replace('~', '.')}.*{message}"):
        search_space(bad)


def test_a_choice_searches_only_its_values_and_substitutes_them_unchanged():
    base = config({"sampler": {"MPerClassSampler": {"m~CHOICE~": [2, 4, 8]}}})
    (m,) = search_space(base)
    assert (m.name, m.flag, m.choices, m.low) == ("MPerClassSampler.m", "CHOICE", (2, 4, 8), 2)
    assert m.distribution() == optuna.distributions.CategoricalDistribution((2, 4, 8))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    draws = {study.ask({m.name: m.distribution()}).params[m.name] for _ in range(60)}
    assert draws == {2, 4, 8}  # each value missed in 60 draws with p = (2/3)^60
    out = substitute(base, [m], {m.name: 4})
    assert out.categories == {"sampler": {"MPerClassSampler": {"m": 4}}}
    assert type(out.categories["sampler"]["MPerClassSampler"]["m"]) is int


@pytest.mark.parametrize("choices", [[4], [2, 2], [2, "x"], 3, [True, False]])
def test_bad_choices_name_the_key(choices):
    bad = config({"sampler": {"MPerClassSampler": {"m~CHOICE~": choices}}})
    with pytest.raises(ConfigError, match=r"m.CHOICE.*two or more distinct numbers"):
        search_space(bad)
