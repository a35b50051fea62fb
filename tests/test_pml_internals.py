"""pml_internals: each write into PML's trainer, tester and hooks lands on the attribute PML
itself reads. Oracles: PML's own objects (a renamed attribute in a PML upgrade fails here) and,
for the epoch stream, the batches of a fresh DataLoader pass over the same sequential sampler."""
import pytest
import torch
from pytorch_metric_learning.testers import GlobalEmbeddingSpaceTester
from pytorch_metric_learning.trainers import MetricLossOnly
from pytorch_metric_learning.utils.logging_presets import HookContainer

from pml_ext.runner.run.pml_internals import (keep_with_models, name_reference_splits, plain_models,
                                              restart_epoch_stream, stop_model_saving, train_with,
                                              trunk_output_only, wrap_accuracy_calculation)


class Saveable:
    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def pml_trainer(num_samples: int = 12, batch_size: int = 4) -> MetricLossOnly:
    data = torch.arange(num_samples, dtype=torch.float32).unsqueeze(1)
    dataset = torch.utils.data.TensorDataset(data, torch.arange(num_samples) % 3)
    trunk = torch.nn.Linear(1, 2)
    return MetricLossOnly(models={"trunk": trunk, "embedder": torch.nn.Identity()},
                          optimizers={}, batch_size=batch_size, loss_funcs={"metric_loss": torch.nn.Identity()},
                          dataset=dataset, sampler=torch.utils.data.SequentialSampler(dataset),
                          dataloader_num_workers=0, iterations_per_epoch=1)


def test_a_restarted_epoch_stream_yields_the_first_batches_of_a_fresh_pass():
    trainer = pml_trainer()
    trainer.initialize_dataloader()
    first = next(trainer.dataloader_iter)[0]
    assert torch.equal(next(trainer.dataloader_iter)[0], first + 4)   # PML carries the pass on
    restart_epoch_stream(trainer)
    assert torch.equal(next(trainer.dataloader_iter)[0], first)


def test_an_object_kept_with_the_models_is_listed_once_among_pml_hooks_saveable_objects():
    hooks, trainer, state = HookContainer(record_keeper=None), pml_trainer(), Saveable()
    listed = list(hooks.saveable_trainer_objects)
    keep_with_models(trainer, hooks, "run_state", state)
    keep_with_models(trainer, hooks, "run_state", state)
    assert trainer.run_state is state
    assert hooks.saveable_trainer_objects == listed + ["run_state"]
    assert hooks.do_save_models is True
    stop_model_saving(hooks)
    assert hooks.do_save_models is False


def test_tester_writes_reach_pml_tester_attributes_and_trunk_output_is_off_after_a_failure():
    tester = GlobalEmbeddingSpaceTester(dataloader_num_workers=0)
    name_reference_splits(tester, [("val", ["val", "train"])])
    assert tester.reference_split_names["val"] == ["val", "train"]
    calls = []
    original = tester.accuracy_calculator.get_accuracy
    wrap_accuracy_calculation(tester, lambda f: (calls.append(f), f)[1])
    assert calls == [original]
    assert tester.use_trunk_output is False
    with pytest.raises(RuntimeError, match="boom"):
        with trunk_output_only(tester, True):
            assert tester.use_trunk_output is True
            raise RuntimeError("boom")
    assert tester.use_trunk_output is False


def test_the_trained_modules_are_what_pml_calls_and_the_plain_ones_come_back_after_an_error():
    trainer = pml_trainer()
    plain = dict(trainer.models)
    doubled = {"trunk": torch.nn.Sequential(plain["trunk"], torch.nn.Identity()), "embedder": plain["embedder"]}
    train_with(trainer, doubled, {"metric_loss": torch.nn.Identity()})
    assert trainer.models is doubled
    # PML's own embedding path (get_trunk_output) calls the modules set here.
    x = torch.ones(2, 1)
    assert torch.equal(trainer.get_trunk_output(x), doubled["trunk"](x))
    with pytest.raises(RuntimeError, match="inside"):
        with plain_models(trainer, plain):
            assert trainer.models is plain
            raise RuntimeError("inside")
    assert trainer.models is doubled
