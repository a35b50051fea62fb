"""AdaptiveController: synthetic plants, the rules against hand-computed and numpy fits, bounds,
fallback, resume, errors, FractionActiveMeter against brute-force counts, PML miners and trainers."""
import glob
import itertools
import logging
import math

import numpy as np
import pytest
import torch
from pytorch_metric_learning import miners

from pml_ext.hooks.adaptive_controller import AdaptiveController
from pml_ext.hooks.control_rule import ControlRule
from pml_ext.hooks.fraction_active_meter import FractionActiveMeter
from pml_ext.hooks.least_squares_rule import LeastSquaresRule
from pml_ext.hooks.proportional_rule import ProportionalRule

TARGET = 0.5


class Plant:
    """A 'miner' whose error is ``g(setting) + noise``, g a Hill curve with midpoint ``s_star``.

    ``g(s) = s^2 / (s^2 + s_star^2)`` (increasing) or ``s_star^2 / (s^2 + s_star^2)``
    (decreasing): monotone, known, saturating at 0 and 1 like a fraction of active
    triplets, and ``g(s_star) = 0.5`` exactly, so the target setting is ``s_star``.
    """

    def __init__(self, setting, increasing=True, s_star=1.0, noise=0.05):
        self.setting = setting
        self.increasing = increasing
        self.s_star = s_star
        self.noise = noise
        self.fraction_active = float("nan")

    def g(self, s):
        up = s ** 2 / (s ** 2 + self.s_star ** 2)
        return up if self.increasing else 1.0 - up

    def run_epoch(self, controller, epoch, iterations=50):
        """One epoch: ``iterations`` noisy readings observed, then ``step``. Returns the epoch's mean error."""
        gen = torch.Generator().manual_seed(1000 + epoch)  # noise depends on the epoch only: resumable
        values = (self.g(float(self.setting)) + self.noise * torch.randn(iterations, generator=gen, dtype=torch.float64))
        values = values.clamp(0.0, 1.0)
        for v in values.tolist():
            self.fraction_active = v
            controller.observe()
        controller.step()
        return float(values.mean())


RULES = {
    "least_squares": lambda: "least_squares",
    "least_squares_log": lambda: LeastSquaresRule(log_space=True),
    "proportional": lambda: "proportional",
}


@pytest.mark.parametrize("rule, increasing, offset", list(itertools.product(RULES, [True, False], [10.0, 0.1])))
def test_synthetic_plant_reaches_target_within_8_epochs_and_stays(rule, increasing, offset):
    plant = Plant(setting=offset, increasing=increasing)
    direction = "increasing" if increasing else "decreasing"
    ctrl = AdaptiveController(plant, "setting", TARGET, rule=RULES[rule](), start_epoch=1, direction=direction)
    errors = [plant.run_epoch(ctrl, epoch) for epoch in range(1, 13)]
    # Epoch 8 onwards: the epoch's mean error within 0.05 of the target (10x off at epoch 1).
    late = errors[7:]
    assert max(abs(e - TARGET) for e in late) <= 0.05, errors
    assert abs(plant.setting - 1.0) < 0.25  # and the setting sits near g's midpoint s_star = 1


@pytest.mark.parametrize("rule, increasing", list(itertools.product(RULES, [True, False])))
def test_unknown_direction_is_inferred_after_a_probe(rule, increasing):
    plant = Plant(setting=10.0, increasing=increasing)
    ctrl = AdaptiveController(plant, "setting", TARGET, rule=RULES[rule](), start_epoch=1)
    assert ctrl.direction is None
    errors = [plant.run_epoch(ctrl, epoch) for epoch in range(1, 17)]
    assert ctrl.direction == ("increasing" if increasing else "decreasing")
    # The probe goes the wrong way half the time (x2, then back): allow three more epochs.
    assert max(abs(e - TARGET) for e in errors[10:]) <= 0.05, errors


def test_known_direction_skips_the_probe():
    # Told the direction, the first step already goes towards the target: error 0.99 > 0.5 on an
    # increasing plant must lower the setting (an unknown direction probes upwards instead).
    told = Plant(10.0)
    ctrl = AdaptiveController(told, "setting", TARGET, start_epoch=1, direction="increasing")
    told.run_epoch(ctrl, 1)
    assert told.setting < 10.0
    probing = Plant(10.0)
    ctrl = AdaptiveController(probing, "setting", TARGET, start_epoch=1)
    probing.run_epoch(ctrl, 1)
    assert probing.setting == pytest.approx(20.0) and ctrl.used_fallback == 1.0


def test_start_epoch_measures_but_does_not_act_before_it():
    plant = Plant(4.0)
    ctrl = AdaptiveController(plant, "setting", TARGET, start_epoch=3, direction="increasing")
    for epoch in (1, 2):
        plant.run_epoch(ctrl, epoch)
        assert plant.setting == 4.0 and ctrl.history == []
        assert 0.9 < ctrl.last_error <= 1.0  # g(4) = 16/17
    plant.run_epoch(ctrl, 3)
    assert plant.setting < 4.0 and [h[0] for h in ctrl.history] == [3]


# ---------------------------------------------------------------- rules vs oracles
def test_least_squares_fit_hand_computed():
    # Points (e, s) = (0.2, 1), (0.6, 2): slope = (2 - 1) / (0.6 - 0.2) = 2.5,
    # intercept = 1 - 2.5 * 0.2 = 0.5, proposal at e = 0.5: 2.5 * 0.5 + 0.5 = 1.75.
    setting, slope, intercept, fallback = LeastSquaresRule().propose([1.0, 2.0], [0.2, 0.6], 0.5, sign=1)
    assert (setting, slope, intercept, fallback) == (pytest.approx(1.75), pytest.approx(2.5), pytest.approx(0.5), False)


def test_least_squares_fit_matches_numpy_polyfit_over_the_window():
    settings, errors = [3.0, 2.0, 2.5, 1.2, 1.7], [0.9, 0.55, 0.8, 0.3, 0.45]
    slope, intercept = np.polyfit(errors, settings, 1)
    proposal, a, b, fallback = LeastSquaresRule().propose(settings, errors, 0.5, sign=1)
    assert not fallback and a == pytest.approx(slope) and b == pytest.approx(intercept)
    assert proposal == pytest.approx(slope * 0.5 + intercept)
    # log_space fits log(setting) on the error.
    slope, intercept = np.polyfit(errors, np.log(settings), 1)
    proposal, a, b, _ = LeastSquaresRule(log_space=True).propose(settings, errors, 0.5, sign=1)
    assert a == pytest.approx(slope) and proposal == pytest.approx(math.exp(slope * 0.5 + intercept))


def test_controller_uses_only_the_last_window_epochs():
    # Noise-free monotone plant: every fit is well defined, so each new setting must be
    # numpy's least-squares line through the last `window` (error, setting) pairs.
    plant = Plant(1.6, noise=0.0)  # g = 0.72: off, but not saturated, so the line is a fair model
    ctrl = AdaptiveController(plant, "setting", TARGET, start_epoch=1, window=3, direction="increasing",
                              max_step=100.0)
    plant.run_epoch(ctrl, 1)  # one point: fallback
    for epoch in range(2, 7):
        plant.run_epoch(ctrl, epoch)
        last = ctrl.history[-3:]
        slope, intercept = np.polyfit([e for _, _, e in last], [s for _, s, _ in last], 1)
        assert ctrl.used_fallback == 0.0
        assert ctrl.slope == pytest.approx(slope) and ctrl.intercept == pytest.approx(intercept)
        assert plant.setting == pytest.approx(slope * TARGET + intercept)
    assert len(ctrl.history) == 6 and abs(plant.g(plant.setting) - TARGET) < 0.01


@pytest.mark.parametrize("settings, errors, sign, why", [
    ([1.0], [0.8], 1, "one epoch"),
    ([1.0, 1.0], [0.8, 0.7], 1, "settings not distinct"),
    ([1.0, 2.0], [0.9, 0.9], 1, "errors equal (saturated)"),
    ([1.0, 2.0], [0.9, 0.6], 1, "slope of the wrong sign for direction"),
])
def test_degenerate_history_uses_the_multiplicative_fallback(settings, errors, sign, why):
    proposal, _, _, fallback = LeastSquaresRule(gain=2.0).propose(settings, errors, 0.5, sign)
    assert fallback, why
    # Hand-computed: last setting * exp(sign * gain * (target - last error)).
    assert proposal == pytest.approx(settings[-1] * math.exp(sign * 2.0 * (0.5 - errors[-1])))


def test_controller_reports_fallback_and_bounds_its_step():
    plant = Plant(10.0, noise=0.0)
    ctrl = AdaptiveController(plant, "setting", TARGET, start_epoch=1, direction="increasing", max_step=1.5)
    plant.run_epoch(ctrl, 1)  # one point: fallback exp(2 * (0.5 - 100/101)) = 0.375 -> limited to 1/1.5
    assert ctrl.used_fallback == 1.0 and math.isnan(ctrl.slope)
    assert plant.setting == pytest.approx(10.0 / 1.5)


def test_proportional_rule_hand_computed():
    # 2 * exp(+1 * 0.5 * (0.5 - 0.3)) = 2 * e^0.1
    proposal, slope, _, fallback = ProportionalRule(gain=0.5).propose([1.0, 2.0], [0.9, 0.3], 0.5, sign=1)
    assert proposal == pytest.approx(2 * math.exp(0.1)) and math.isnan(slope) and not fallback
    assert ProportionalRule().propose([2.0], [0.3], 0.5, sign=0)[0] is None  # needs a direction


def test_a_custom_rule_is_a_small_class():
    class Halve(ControlRule):
        name = "halve"

        def propose(self, settings, errors, target, sign):
            return settings[-1] / 2, float("nan"), float("nan"), False

    plant = Plant(8.0)
    ctrl = AdaptiveController(plant, "setting", TARGET, rule=Halve(), start_epoch=1)
    plant.run_epoch(ctrl, 1)
    assert plant.setting == 4.0


# ---------------------------------------------------------------- bounds, ints
@pytest.mark.parametrize("rule", list(RULES))
def test_bounds_are_respected(rule):
    # The target needs s_star = 1, outside the bounds: the controller must stop at the bound.
    plant = Plant(3.0)
    ctrl = AdaptiveController(plant, "setting", TARGET, rule=RULES[rule](), start_epoch=1, bounds=(2.0, 5.0))
    seen = []
    for epoch in range(1, 11):
        plant.run_epoch(ctrl, epoch)
        seen.append(plant.setting)
    assert all(2.0 <= s <= 5.0 for s in seen)
    assert seen[-1] == 2.0


def test_integer_attribute_stays_int_and_moves_from_one():
    class Pool:
        def __init__(self):
            self.max_negatives = 1
            self.fraction_active = 0.1

    pool = Pool()
    ctrl = AdaptiveController(pool, "max_negatives", TARGET, start_epoch=1, direction="increasing",
                              max_step=1.2, bounds=(1, 6.5))
    for _ in range(10):
        ctrl.observe()
        ctrl.step()
        assert isinstance(pool.max_negatives, int)
    # 1 * min(1.2, exp(0.8)) = 1.2 rounds back to 1; the controller still moves by one.
    assert pool.max_negatives == 6  # floor of the upper bound 6.5


# ---------------------------------------------------------------- state
def test_resume_from_state_dict_gives_identical_settings(tmp_path):
    plant = Plant(10.0)
    ctrl = AdaptiveController(plant, "setting", TARGET, start_epoch=2)
    reference = []
    for epoch in range(1, 11):
        plant.run_epoch(ctrl, epoch)
        reference.append(plant.setting)

    plant = Plant(10.0)
    ctrl = AdaptiveController(plant, "setting", TARGET, start_epoch=2)
    for epoch in range(1, 5):
        plant.run_epoch(ctrl, epoch)
    plant.fraction_active = 0.7
    ctrl.observe()  # a half-finished epoch must survive too
    torch.save(ctrl.state_dict(), tmp_path / "ctrl.pt")

    resumed_plant = Plant(10.0)  # a fresh process: the attribute is back at its initial value
    resumed = AdaptiveController(resumed_plant, "setting", TARGET, start_epoch=2)
    resumed.load_state_dict(torch.load(tmp_path / "ctrl.pt", weights_only=True))
    assert resumed_plant.setting == reference[3] and resumed.history == ctrl.history
    assert resumed.state_dict() == ctrl.state_dict()
    # Finish the interrupted epoch 5 in both and continue: identical from there on.
    for c in (ctrl, resumed):
        c.step()
    assert resumed_plant.setting == plant.setting
    for epoch in range(6, 11):
        plant.run_epoch(ctrl, epoch)
        resumed_plant.run_epoch(resumed, epoch)
        assert resumed_plant.setting == plant.setting


def test_load_state_dict_rejects_another_controllers_state():
    ctrl = AdaptiveController(Plant(1.0), "setting", TARGET)
    other = AdaptiveController(Plant(1.0), "setting", TARGET, rule="proportional")
    with pytest.raises(ValueError, match="rule"):
        other.load_state_dict(ctrl.state_dict())
    with pytest.raises(ValueError, match="missing"):
        ctrl.load_state_dict({"version": 1})


def test_record_keeper_logs_plain_floats_under_its_own_group(tmp_path):
    import record_keeper as rk
    from pytorch_metric_learning.utils import common_functions as c_f

    plant = Plant(10.0)
    ctrl = AdaptiveController(plant, "setting", TARGET, start_epoch=1)
    keeper = rk.RecordKeeper(record_writer=rk.RecordWriter(str(tmp_path)),
                             attributes_to_search_for=c_f.list_of_recordable_attributes_list_names())
    for epoch in range(1, 4):
        plant.run_epoch(ctrl, epoch)
        assert all(type(getattr(ctrl, k)) is float for k in ctrl._record_these)
        keeper.update_records({"ctrl": ctrl}, epoch)
    assert set(ctrl._record_these) == {"target", "setting", "last_error", "slope", "intercept", "proposal",
                                       "used_fallback", "clipped_by_step", "clipped_by_bounds"}
    group = keeper.get_record("ctrl_AdaptiveController")
    assert group["setting"] == {e: s for e, s in zip((1, 2, 3), [h[1] for h in ctrl.history[1:]] + [plant.setting])}
    assert group["last_error"][3] == ctrl.last_error and group["target"][1] == TARGET
    keeper.save_records()
    assert glob.glob(str(tmp_path / "ctrl_AdaptiveController.csv"))


# ---------------------------------------------------------------- observe
def test_observe_skips_none_and_nan_and_averages_the_rest():
    plant = Plant(1.0)
    ctrl = AdaptiveController(plant, "setting", TARGET, start_epoch=1, direction="increasing")
    for v in (0.2, None, float("nan"), 0.4, torch.tensor(0.6)):
        ctrl.observe(v)
    ctrl.step()
    assert ctrl.last_error == pytest.approx(0.4) and ctrl.num_skipped == 2


def test_epoch_without_observations_keeps_the_setting():
    plant = Plant(3.0)
    ctrl = AdaptiveController(plant, "setting", TARGET, start_epoch=1)
    assert ctrl.step() == 3.0 and ctrl.history == [] and ctrl.epoch == 1


def test_callable_measure():
    plant = Plant(10.0, noise=0.0)
    ctrl = AdaptiveController(plant, "setting", TARGET, measure=lambda: plant.g(plant.setting), start_epoch=1,
                              fraction=True, direction="increasing")
    for _ in range(10):
        ctrl.observe()
        ctrl.step()
    assert abs(plant.g(plant.setting) - TARGET) < 0.02


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(attribute="kappa"), ValueError, "attribute 'kappa' not found"),
    (dict(attribute="miner.margin"), ValueError, "attribute 'miner.margin' not found"),
    (dict(measure="loss_fraction"), ValueError, "measure 'loss_fraction' not found"),
    (dict(measure=3), TypeError, "measure"),
    (dict(target=1.5), ValueError, r"target must lie in \[0, 1\]"),
    (dict(target=-0.1), ValueError, r"target must lie in \[0, 1\]"),
    (dict(window=1), ValueError, "window must be >= 2"),
    (dict(window=2.5), TypeError, "window"),
    (dict(bounds=(2.0, 2.0)), ValueError, "bounds must satisfy lo < hi"),
    (dict(bounds=(3.0, 1.0)), ValueError, "bounds must satisfy lo < hi"),
    (dict(rule="pid"), ValueError, "rule must be one of"),
    (dict(direction="up"), ValueError, "direction"),
    (dict(start_epoch=0), ValueError, "start_epoch"),
    (dict(max_step=1.0), ValueError, "max_step"),
])
def test_clear_errors(kwargs, exc, match):
    args = dict(module=Plant(1.0), attribute="setting", target=TARGET) | kwargs
    with pytest.raises(exc, match=match):
        AdaptiveController(**args)


def test_errors_on_the_steered_value():
    plant = Plant(0.0)
    with pytest.raises(ValueError, match="attribute 'setting' must be a finite number > 0"):
        AdaptiveController(plant, "setting", TARGET)
    plant.setting = "big"
    with pytest.raises(TypeError, match="attribute 'setting' must hold an int or float"):
        AdaptiveController(plant, "setting", TARGET)
    # A non-fraction measure may have any target.
    plant.setting, plant.loss = 1.0, 3.0
    assert AdaptiveController(plant, "setting", 7.0, measure="loss").target == 7.0
    ctrl = AdaptiveController(Plant(1.0), "setting", TARGET)
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        ctrl.observe(1.5)
    with pytest.raises(TypeError, match="value must be a number"):
        ctrl.observe("high")


# ---------------------------------------------------------------- PML miners
def brute_force_fraction(miner_output, labels, kind):
    """Count candidates by looping over every tuple, straight from the definition."""
    n = len(labels)
    lab = labels.tolist()
    if kind == "triplet":
        total = sum(1 for a in range(n) for p in range(n) for q in range(n)
                    if a != p and lab[a] == lab[p] and lab[a] != lab[q])
        return len(miner_output[0]) / total
    pos = sum(1 for a in range(n) for p in range(n) if a != p and lab[a] == lab[p])
    neg = sum(1 for a in range(n) for q in range(n) if lab[a] != lab[q])
    return (len(miner_output[0]) + len(miner_output[2])) / (pos + neg)


def batch(seed=0, n=24, classes=4, dim=8):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=gen), torch.randint(0, classes, (n,), generator=gen)


@pytest.mark.parametrize("inner, kind", [
    (miners.TripletMarginMiner(margin=0.3), "triplet"),
    (miners.TripletMarginMiner(margin=0.1, type_of_triplets="semihard"), "triplet"),
    (miners.MultiSimilarityMiner(epsilon=0.2), "pair"),
    (miners.PairMarginMiner(pos_margin=0.5, neg_margin=1.0), "pair"),
])
def test_fraction_active_meter_matches_brute_force_and_pml(inner, kind):
    emb, labels = batch()
    meter = FractionActiveMeter(inner)
    out = meter(emb, labels)
    expected = inner(emb, labels)  # PML's own miner on the same inputs
    assert all(torch.equal(a, b) for a, b in zip(out, expected))
    assert meter.fraction_active == pytest.approx(brute_force_fraction(out, labels, kind))
    assert 0.0 < meter.fraction_active < 1.0 and type(meter.fraction_active) is float


def test_fraction_active_meter_with_ref_emb_and_without_candidates():
    emb, labels = batch(1)
    ref, ref_labels = batch(2)
    meter = FractionActiveMeter(miners.TripletMarginMiner(margin=0.5))
    out = meter(emb, labels, ref, ref_labels)
    lab, rl = labels.tolist(), ref_labels.tolist()
    # With a separate reference set every (a, p, n) with y_a = y_p, y_a != y_n counts (no a != p rule).
    total = sum(1 for a in range(len(lab)) for p in range(len(rl)) for q in range(len(rl))
                if lab[a] == rl[p] and lab[a] != rl[q])
    assert meter.fraction_active == pytest.approx(len(out[0]) / total)
    meter(emb[:3], torch.zeros(3, dtype=torch.long))  # one class: no triplet at all
    assert math.isnan(meter.fraction_active)


def test_direction_table_for_known_miners():
    def direction(miner, attribute):
        return AdaptiveController(FractionActiveMeter(miner), f"miner.{attribute}", TARGET).direction

    assert direction(miners.TripletMarginMiner(margin=0.2), "margin") == "increasing"
    assert direction(miners.TripletMarginMiner(margin=0.2, type_of_triplets="easy"), "margin") == "decreasing"
    assert direction(miners.TripletMarginMiner(margin=0.2, type_of_triplets="hard"), "margin") is None
    assert direction(miners.MultiSimilarityMiner(epsilon=0.1), "epsilon") == "increasing"
    assert direction(miners.PairMarginMiner(), "pos_margin") == "decreasing"
    assert direction(miners.PairMarginMiner(), "neg_margin") == "increasing"


def clustered(seed=3, n=32, classes=4, dim=8, spread=0.3):
    """Classes around random centres: the mined fraction then spans (0, 1) as margins grow."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=gen)
    labels = torch.arange(n) % classes
    return centers[labels] + spread * torch.randn(n, dim, generator=gen), labels


@pytest.mark.parametrize("make_inner, attribute, target", [
    (lambda: miners.TripletMarginMiner(margin=0.05), "margin", 0.5),
    (lambda: miners.TripletMarginMiner(margin=0.05, type_of_triplets="easy"), "margin", 0.3),
    (lambda: miners.MultiSimilarityMiner(epsilon=0.05), "epsilon", 0.5),
])
@pytest.mark.parametrize("rule", ["least_squares", "proportional"])
def test_controller_steers_pml_miners_on_a_fixed_batch(make_inner, attribute, target, rule):
    # Fixed embeddings: the mined fraction is a deterministic monotone step function of the
    # attribute with fine steps (about 6,000 candidate triplets, 1,000 pairs), so the
    # target is reachable; every start is far off (fractions 0.03, 0.98 and 0.10).
    emb, labels = clustered()
    meter = FractionActiveMeter(make_inner())
    ctrl = AdaptiveController(meter, f"miner.{attribute}", target, rule=rule, start_epoch=1)
    assert ctrl.direction is not None  # from the table: no probing needed
    for _ in range(12):
        for _ in range(3):
            meter(emb, labels)
            ctrl.observe()
        ctrl.step()
    meter(emb, labels)
    assert abs(meter.fraction_active - target) <= 0.05, ctrl.history


# ---------------------------------------------------------------- PML trainer + HookContainer
def build_trainer(folder):
    """MetricLossOnly on digits with a HookContainer (record-keeper, tester, model saving)
    whose hooks are wrapped by the controller of a TripletMarginMiner's margin."""
    import record_keeper as rk
    from pytorch_metric_learning import losses, testers, trainers
    from pytorch_metric_learning.utils import common_functions as c_f
    from pytorch_metric_learning.utils import logging_presets
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    import pml_ext

    logging.getLogger("PML").setLevel(logging.WARNING)
    train, test = pml_ext.digits_split()
    torch.manual_seed(0)
    model = pml_ext.MLP([64, 32, 8])
    meter = FractionActiveMeter(miners.TripletMarginMiner(margin=0.05))
    ctrl = AdaptiveController(meter, "miner.margin", TARGET, start_epoch=1)
    keeper = rk.RecordKeeper(record_writer=rk.RecordWriter(f"{folder}/logs"),
                             attributes_to_search_for=c_f.list_of_recordable_attributes_list_names())
    hooks = logging_presets.HookContainer(keeper, primary_metric="precision_at_1", log_freq=5)
    cpu = torch.device("cpu")
    tester = testers.GlobalEmbeddingSpaceTester(
        dataloader_num_workers=0, batch_size=512, data_device=cpu,
        accuracy_calculator=AccuracyCalculator(include=("precision_at_1",), k=1, device=cpu))
    end_of_iteration, end_of_epoch = ctrl.wrap_hook_container(
        hooks, hooks.end_of_epoch_hook(tester, {"val": test}, f"{folder}/models"))
    trainer = trainers.MetricLossOnly(
        models={"trunk": model}, optimizers={"trunk_optimizer": torch.optim.Adam(model.parameters(), 1e-3)},
        batch_size=128, loss_funcs={"metric_loss": losses.TripletMarginLoss(margin=0.1)},
        mining_funcs={"tuple_miner": meter}, dataset=train, dataloader_num_workers=0, data_device=cpu,
        end_of_iteration_hook=end_of_iteration, end_of_epoch_hook=end_of_epoch)
    ctrl.attach(trainer)  # before load_latest_saved_models, so the container restores it
    return trainer, ctrl, hooks, meter


def test_hook_container_wrapping_logs_saves_and_resumes_with_pml_trainer(tmp_path):
    trainer, ctrl, hooks, meter = build_trainer(tmp_path)
    trainer.train(num_epochs=2)
    # The controller ran once per iteration and once per epoch, after the miner.
    assert ctrl.epoch == 2 and [h[0] for h in ctrl.history] == [1, 2]
    assert ctrl.history[0][1] == 0.05 and meter.miner.margin == ctrl.setting != 0.05
    # Its own record-keeper group, one row per epoch, next to the container's own logs.
    rows = (tmp_path / "logs" / "adaptive_controller_AdaptiveController.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert {"target", "setting", "last_error", "slope", "intercept"} <= set(header)
    last = dict(zip(header, rows[-1].split(",")))
    assert float(last["setting"]) == pytest.approx(ctrl.setting) and float(last["last_error"]) == pytest.approx(
        ctrl.last_error)
    assert (tmp_path / "logs" / "loss_histories.csv").exists()  # the container's hooks still ran
    # HookContainer saved the controller with the models, and restores it on resume.
    assert (tmp_path / "models" / "adaptive_controller_2.pth").exists()
    trainer2, ctrl2, hooks2, meter2 = build_trainer(tmp_path)
    assert meter2.miner.margin == 0.05
    start = hooks2.load_latest_saved_models(trainer2, f"{tmp_path}/models", device=torch.device("cpu"))
    assert start == 3
    assert ctrl2.state_dict() == ctrl.state_dict() and meter2.miner.margin == meter.miner.margin
    trainer2.train(start_epoch=start, num_epochs=3)
    assert [h[0] for h in ctrl2.history] == [1, 2, 3] and ctrl2.history[2][1] == meter.miner.margin


@pytest.mark.parametrize("rule", ["least_squares", "proportional"])
def test_controller_steers_the_isometric_miners_integer_pool_size(rule):
    from pml_ext.miners.isometric_hard_miner import IsometricHardMiner

    # One hardest triplet per anchor, so the error is the share of those with a non-zero
    # margin loss; a bigger random candidate pool holds harder negatives (0.13 at 1, 0.35 at all 36).
    emb, labels = clustered(n=48)
    meter = FractionActiveMeter(IsometricHardMiner(margin=0.2, max_negatives=1, seed=0), loss_margin=0.2)
    ctrl = AdaptiveController(meter, "miner.max_negatives", 0.3, rule=rule, start_epoch=1, bounds=(1, 36))
    assert ctrl.direction == "increasing"
    for _ in range(12):
        for _ in range(4):
            meter(emb, labels)
            ctrl.observe()
        ctrl.step()
        assert isinstance(meter.miner.max_negatives, int) and 1 <= meter.miner.max_negatives <= 36
    readings = []
    for _ in range(20):
        meter(emb, labels)
        readings.append(meter.fraction_active)
    assert abs(sum(readings) / len(readings) - 0.3) <= 0.05, ctrl.history


def test_fraction_active_meter_loss_margin_mode_matches_a_loop():
    emb, labels = clustered(n=16)
    inner = miners.BatchHardMiner()
    meter = FractionActiveMeter(inner, loss_margin=0.3)
    a, p, n = meter(emb, labels)
    x = torch.nn.functional.normalize(emb)  # BatchHardMiner's default LpDistance normalises
    active = [float(torch.dist(x[i], x[k]) - torch.dist(x[i], x[j])) < 0.3 for i, j, k in zip(a, p, n)]
    assert meter.fraction_active == pytest.approx(sum(active) / len(active))
    with pytest.raises(TypeError, match="loss_margin needs a triplet miner"):
        FractionActiveMeter(miners.MultiSimilarityMiner(), loss_margin=0.1)(emb, labels)
    with pytest.raises(TypeError, match="loss_margin"):
        FractionActiveMeter(inner, loss_margin="0.1")


# ---------------------------------------------------------------- real use: smart mining on digits
@pytest.fixture(scope="module")
def smart_digits_run():
    """SmartMiner + SmartBatchSampler steered through kappa, target 0.5 (the paper's); 12 epochs, seed 0.

    The error is SmartMiner.fraction_active: the share of each batch's triplets with a
    non-zero ratio-triplet loss, averaged over the epoch. Trained once for the tests below.
    """
    import pml_ext
    from pml_ext.utils.experiment import embed_dataset, train_metric_model

    train, _ = pml_ext.digits_split()
    torch.manual_seed(0)
    model = pml_ext.MLP([64, 128, 16])
    miner = pml_ext.SmartMiner(kappa=32.0, k=256, batch_layout=True, seed=0)
    sampler = pml_ext.SmartBatchSampler(miner, 63, mined_fraction=1.0, warmup_epochs=2, seed=0, labels=train.labels)
    ctrl = AdaptiveController(miner, "kappa", TARGET, bounds=(1.0, 1000.0))  # start_epoch=3: after warm-up
    shares = []

    def end_of_epoch(epoch, record):
        shares.append(sampler.mined_share_in_epoch)
        ctrl.step()  # sets kappa for the next epoch's mining
        sampler.update(embed_dataset(model, train.data), train.labels)

    train_metric_model(model, train.data, train.labels, pml_ext.RatioTripletLoss(margin=0.2), miner,
                       batch_size=63, epochs=12, lr=1e-4, seed=0, sampler=sampler,
                       on_iteration=lambda record: ctrl.observe(), on_epoch_end=end_of_epoch)
    return ctrl, shares


def test_smart_mining_on_digits_steers_kappa_within_its_bounds(smart_digits_run):
    ctrl, shares = smart_digits_run
    assert ctrl.direction == "decreasing"  # larger kappa, easier negatives (eq. 6)
    assert [h[0] for h in ctrl.history] == list(range(3, 13))
    assert ctrl.history[0][2] > 0.7  # kappa = 32 starts too hard: most triplets active
    assert all(1.0 <= s <= 1000.0 for _, s, _ in ctrl.history)
    assert shares[:2] == [0.0, 0.0] and len(ctrl.step_log) == 12
    # No band is claimed here: training moves the plant under the controller (error 0.06 at
    # kappa 87, 0.93 at 55 in this run), and with kappa held at 32 training alone brings the
    # error from 1.0 to 0.25. The band is claimed on a plant that holds still, below.


def test_smart_miner_kappa_settles_within_a_noise_band_of_the_target_on_a_fixed_digits_embedding():
    """A smooth, stationary plant: in-batch SmartMiner on fixed digits embeddings (an untrained MLP),
    10 fixed batches of 63 an epoch. The error falls smoothly with kappa (1.0 at 4, 0.77 at 16,
    0.51 at 32, then the floor of random triplets, 0.43); the target 0.8 lies on the slope."""
    import statistics

    import pml_ext
    from pml_ext.utils.experiment import embed_dataset

    train, _ = pml_ext.digits_split()
    torch.manual_seed(0)
    emb, labels = embed_dataset(pml_ext.MLP([64, 128, 16]), train.data), torch.as_tensor(train.labels)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    batches = [order[i:i + 63] for i in range(0, 630, 63)]
    miner, target = pml_ext.SmartMiner(kappa=32.0, seed=0), 0.8
    ctrl = AdaptiveController(miner, "kappa", target, start_epoch=1, bounds=(1.0, 1000.0))

    def epoch_errors(num_epochs, steer):
        errors = []
        for _ in range(num_epochs):
            readings = []
            for b in batches:
                miner(emb[b], labels[b])
                readings.append(miner.fraction_active)
                if steer:
                    ctrl.observe()
            if steer:
                ctrl.step()
            errors.append(statistics.fmean(readings))
        return errors

    controlled = epoch_errors(12, steer=True)
    # The band. At a fixed kappa the epoch error varies only by the miner's random draws; sigma
    # is measured over 8 epochs at the final kappa (0.013; the premise is checked).
    held = epoch_errors(8, steer=False)
    sigma = statistics.stdev(held)
    assert sigma <= 0.02, held
    # The setting reached gives the target: the mean of the 8 held epochs is within 4 sigma / sqrt(8)
    # (0.018) of it; and the last 6 controlled epochs' mean within 4 sigma / sqrt(6) (0.021). A
    # controller settled off target by more than about that fails.
    assert abs(statistics.fmean(held) - target) <= 4 * sigma / math.sqrt(8), (held, ctrl.history)
    assert abs(statistics.fmean(controlled[-6:]) - target) <= 4 * sigma / math.sqrt(6), ctrl.history
