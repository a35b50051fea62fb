"""The evaluation side of one split scheme: PML's HookContainer with its record-keeper, and
PB's untrained-accuracy epochs -1 and 0."""
from __future__ import annotations

import logging
import os

from ..config.config_error import ConfigError
from ..state.run_guard import validation_split
from ..state.run_records import splits_not_yet_evaluated, sql_safe_record_keeper
from .pml_internals import trunk_output_only

__all__ = ["build_hooks", "check_untrained_accuracy", "hook_container_spec"]

LOGGER = logging.getLogger("pml_ext.runner")


def _record_keeper(general: dict, folder: str):
    """record-keeper writing CSV + SQLite (+ tensorboard when installed) under ``folder``."""
    import record_keeper as rk
    from pytorch_metric_learning.utils import common_functions as pml_cf

    writer = rk.RecordWriter(folder=os.path.join(folder, "saved_csvs"), save_lists=bool(general["save_lists_in_db"]))
    tensorboard = None
    if general["log_data_to_tensorboard"]:
        try:
            from torch.utils.tensorboard import SummaryWriter

            tensorboard = SummaryWriter(log_dir=os.path.join(folder, "tensorboard_logs"))
        except ImportError:
            LOGGER.info("tensorboard is not installed: records go to CSV and SQLite only")
    return sql_safe_record_keeper()(tensorboard_writer=tensorboard, record_writer=writer,
                                    attributes_to_search_for=pml_cf.list_of_recordable_attributes_list_names())


def build_hooks(registry, config, general: dict, folder: str, splits_to_eval: list, rank: int):
    """``(hooks, record_keeper)``: PML's HookContainer; the record-keeper only on rank 0 (else ``None``).

    Models are chosen on the validation split, never on test."""
    record_keeper = _record_keeper(general, folder) if rank == 0 else None
    name, kwargs = hook_container_spec(registry, config, splits_to_eval)
    hooks = registry.build("hook_container", {name: kwargs}, config.source_of("hook_container"), "hook_container",
                           record_keeper=record_keeper)
    return hooks, record_keeper


def hook_container_spec(registry, config, splits_to_eval: list) -> tuple[str, dict]:
    """The hook container's ``(class name, kwargs)`` with ``validation_split_name`` set (default: the
    first evaluated split that is not test) and checked: evaluated, and never ``test``."""
    source = config.source_of("hook_container")
    spec = config.get("hook_container") or {"HookContainer": {}}
    name, kwargs = registry.parse_spec(spec, source, "hook_container")
    kwargs.setdefault("validation_split_name", validation_split(splits_to_eval, config.source_of("splits_to_eval")))
    if kwargs["validation_split_name"].lower() == "test":
        raise ConfigError(source, "hook_container.validation_split_name",
                          "'test' would choose models (best epoch, early stopping) on the test split; "
                          "choose on a validation split of the training classes (e.g. val)")
    if kwargs["validation_split_name"] not in [q for q, _ in splits_to_eval]:
        raise ConfigError(source, "hook_container.validation_split_name",
                          f"'{kwargs['validation_split_name']}' is not evaluated; splits_to_eval has "
                          f"{', '.join(q for q, _ in splits_to_eval)}")
    return name, kwargs


def check_untrained_accuracy(hooks, tester, eval_sets, models, splits_to_eval, general) -> None:
    """PB's epochs -1 (trunk output only) and 0 (trunk + embedder), before any training."""
    for epoch, trunk_only in ((-1, True), (0, False)):
        with trunk_output_only(tester, trunk_only):
            todo = splits_not_yet_evaluated(hooks, tester, epoch, splits_to_eval) \
                if general["skip_eval_if_already_done"] else [(q, list(r)) for q, r in splits_to_eval]
            if todo:
                tester.test(eval_sets, epoch, models["trunk"], models["embedder"], todo)
