"""Every write the runner makes into the attributes of PML's trainer, tester and hooks.

PML 2.x offers no constructor argument or method for these; each function below is one such
write, with why the runner needs it, so that a PML upgrade that renames an attribute is
checked here and nowhere else.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

__all__ = ["train_with", "plain_models", "keep_with_models", "name_reference_splits", "restart_epoch_stream", "stop_model_saving",
           "trunk_output_only", "wrap_accuracy_calculation"]


def restart_epoch_stream(trainer: Any) -> None:
    """``trainer.dataloader_iter``: a fresh pass over the sampler for the next epoch.

    With ``iterations_per_epoch`` set, PML's trainer carries the unused rest of a pass into the
    next epoch; a resumed run cannot reproduce that rest, so every epoch starts a new pass.
    """
    trainer.dataloader_iter = iter(trainer.dataloader)


def keep_with_models(trainer: Any, hooks: Any, name: str, obj: Any) -> None:
    """``trainer.<name>`` and ``hooks.saveable_trainer_objects``: ``obj`` (with
    ``state_dict``/``load_state_dict``) is saved and loaded with the models.

    PML's hooks save exactly the trainer attributes listed there; the runner's state (sampler,
    controllers, random generators) becomes one more such attribute.
    """
    setattr(trainer, name, obj)
    if name not in hooks.saveable_trainer_objects:
        hooks.saveable_trainer_objects.append(name)


def stop_model_saving(hooks: Any) -> None:
    """``hooks.do_save_models``: off, because the runner's checkpoint store writes the models
    (atomically, with the run's state) instead of PML's hooks."""
    hooks.do_save_models = False


def name_reference_splits(tester: Any, splits_to_eval: list) -> None:
    """``tester.reference_split_names``: ``{query: [references]}`` before any test.

    PML's hooks name record tables from it; ``test()`` sets it too, but a resumed run may
    query the records before testing anything.
    """
    for query, refs in splits_to_eval:
        tester.reference_split_names[query] = list(refs)


def wrap_accuracy_calculation(tester: Any, wrapper: Callable[[Callable], Callable]) -> None:
    """``tester.accuracy_calculator.get_accuracy``: replaced by ``wrapper(get_accuracy)``
    (the runner routes FAISS's native k-means warnings into run.log this way)."""
    calculator = tester.accuracy_calculator
    calculator.get_accuracy = wrapper(calculator.get_accuracy)


@contextlib.contextmanager
def trunk_output_only(tester: Any, trunk_only: bool) -> Iterator[None]:
    """``tester.use_trunk_output``: embed with the trunk alone (PB's epoch -1) inside the block;
    off again afterwards, even when testing fails."""
    tester.use_trunk_output = trunk_only
    try:
        yield
    finally:
        tester.use_trunk_output = False


def train_with(trainer: Any, models: dict, loss_funcs: dict) -> None:
    """``trainer.models`` and ``trainer.loss_funcs``: the modules PML's training step calls.

    Under DDP they are the ``DistributedDataParallel`` wrappers (built after the trainer, once
    a checkpoint was loaded, because DDP broadcasts rank 0's weights at construction); the
    wrappers hold the same Parameter objects, so the optimizers stay valid.
    """
    trainer.models, trainer.loss_funcs = models, loss_funcs


@contextlib.contextmanager
def plain_models(trainer: Any, plain: dict) -> Iterator[None]:
    """``trainer.models`` are the unwrapped modules inside the block: PML's tester and model
    saving must see the plain modules (state-dict keys without DDP's ``module.`` prefix)."""
    wrapped, trainer.models = trainer.models, plain
    try:
        yield
    finally:
        trainer.models = wrapped
