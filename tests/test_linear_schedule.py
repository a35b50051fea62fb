"""LinearSchedule: a setting that depends on the epoch alone.

Oracles: values worked out by hand from the definition (start up to start_epoch, a straight
line to end at end_epoch, end after), an uninterrupted schedule for resume, and the steered
sampler's own attribute.
"""
import io
import math

import pytest
import torch

from pml_ext import ClassHardBatchSampler, LinearSchedule
from pml_ext.runner import Registry
from pml_ext.utils.dotted_path import resolve_object
from pml_ext.utils.protocols import Controller

LABELS = torch.arange(6).repeat_interleave(4)  # 6 classes of 4 samples


def sampler():
    return ClassHardBatchSampler(LABELS, batch_size=8, classes_per_batch=2, samples_per_class=4, neighbours=3)


def values_by_epoch(schedule, epochs):
    """The attribute's value for epochs 1..epochs: the constructor's, then each step's."""
    def read():
        return resolve_object(schedule.controlled, schedule.attribute, "attribute")

    values = [read()]
    for _ in range(epochs - 1):
        schedule.step()
        values.append(read())
    return values


def test_float_setting_holds_then_ramps_then_holds():
    # start_epoch 2, end_epoch 6: the line falls by 1/4 per epoch over epochs 3-6.
    s = sampler()
    schedule = LinearSchedule(s, "random_share", start=1.0, end=0.0, start_epoch=2, end_epoch=6)
    assert values_by_epoch(schedule, 8) == pytest.approx([1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0, 0.0])
    assert schedule.epoch == 7 and schedule.setting == 0.0 and "setting" in schedule._record_these


def test_int_setting_is_rounded_and_stays_int():
    # 2 -> 8 over epochs 1-5: 2, 3.5, 5, 6.5, 8 -> 2, 4, 5, 7, 8 (halves up).
    s = sampler()
    schedule = LinearSchedule(s, "neighbours", start=2, end=8, start_epoch=1, end_epoch=5)
    values = values_by_epoch(schedule, 6)
    assert values == [2, 4, 5, 7, 8, 8] and all(type(v) is int for v in values)
    assert [schedule.value(e) for e in range(1, 7)] == values  # a pure function of the epoch


def test_start_epoch_zero_ramps_from_the_first_epoch_and_dotted_attributes_reach_inside():
    class Holder:
        def __init__(self):
            self.inner = type("Inner", (), {"margin": 0.5})()

    holder = Holder()
    schedule = LinearSchedule(holder, "inner.margin", start=0.0, end=0.3, start_epoch=0, end_epoch=3)
    assert values_by_epoch(schedule, 4) == pytest.approx([0.1, 0.2, 0.3, 0.3])


def test_a_resumed_schedule_continues_where_it_stopped():
    whole = LinearSchedule(sampler(), "random_share", start=1.0, end=0.0, start_epoch=1, end_epoch=5)
    expected = values_by_epoch(whole, 6)
    first = LinearSchedule(sampler(), "random_share", start=1.0, end=0.0, start_epoch=1, end_epoch=5)
    values_by_epoch(first, 3)  # two steps: epochs 1-2 trained, epoch 3's value written
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    s = sampler()
    resumed = LinearSchedule(s, "random_share", start=1.0, end=0.0, start_epoch=1, end_epoch=5)
    resumed.load_state_dict(state)
    assert resumed.epoch == 2 and s.random_share == pytest.approx(expected[2])
    assert [resumed.step() for _ in range(3)] == pytest.approx(expected[3:])


@pytest.mark.parametrize("kwargs, error, message", [
    ({"start": float("nan")}, ValueError, "start must be finite"),
    ({"end": "high"}, TypeError, "end must be a number"),
    ({"end": 1.5}, ValueError, r"end must lie in the range of 'random_share', \[0.0, 1.0\], got 1.5"),
    ({"start_epoch": 4, "end_epoch": 4}, ValueError, "end_epoch must be > start_epoch"),
    ({"start_epoch": -1}, ValueError, "start_epoch must be >= 0"),
    ({"end_epoch": 2.5}, TypeError, "end_epoch must be an int"),
    ({"attribute": "no_such"}, ValueError, "attribute 'no_such' not found"),
    ({"attribute": 3}, TypeError, "attribute must be a str"),
    ({"attribute": "replacement"}, TypeError, "attribute 'replacement' must hold an int or float"),
])
def test_bad_arguments_raise_naming_them(kwargs, error, message):
    args = {"attribute": "random_share", "start": 1.0, "end": 0.0, "start_epoch": 1, "end_epoch": 3, **kwargs}
    with pytest.raises(error, match=message):
        LinearSchedule(sampler(), **args)


@pytest.mark.parametrize("change, error, message", [
    ({"version": 2}, ValueError, r"state\['version'\] is 2"),
    ({"attribute": "neighbours"}, ValueError, r"state\['attribute'\] is 'neighbours'"),
    ({"epoch": -1}, ValueError, r"state\['epoch'\] must be >= 0"),
    ({"epoch": 1.0}, TypeError, r"state\['epoch'\] must be an int"),
])
def test_a_bad_state_raises_naming_the_key_and_changes_nothing(change, error, message):
    s = sampler()
    schedule = LinearSchedule(s, "random_share", start=1.0, end=0.0, start_epoch=1, end_epoch=3)
    with pytest.raises(error, match=message):
        schedule.load_state_dict({**schedule.state_dict(), **change})
    assert schedule.epoch == 0 and s.random_share == 1.0


def test_it_is_a_controller_the_runner_can_build():
    assert issubclass(LinearSchedule, Controller)
    assert Registry().get("controller", "LinearSchedule") is LinearSchedule
    assert math.isclose(LinearSchedule(sampler(), "random_share", start=0.5, end=0.0, end_epoch=2).setting, 0.5)
