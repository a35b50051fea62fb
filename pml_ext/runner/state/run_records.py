"""The run's records: batch getters, record-keeper tables and what they hold."""
from __future__ import annotations

from .experiment_report import ITERATION

__all__ = ["batch_getter", "sql_safe_record_keeper", "recordable_statistics", "settings_history",
           "splits_not_yet_evaluated"]


def batch_getter(keys):
    """PML's ``data_and_label_getter`` for batches that are ``(data, labels)`` or PB-style dicts."""
    def getter(batch):
        if isinstance(batch, dict):
            if keys is None:
                raise ValueError("the data set yields dicts: give split_manager data_and_label_getter_keys")
            return batch[keys[0]], batch[keys[1]]
        return batch
    return getter


def sql_safe_record_keeper():
    import record_keeper as rk

    class SqlSafeRecordKeeper(rk.RecordKeeper):
        """record-keeper names a group after the attribute path; the items of a ``ModuleList``
        (``MultipleLosses(losses=[...])``) give names starting with a digit, which SQLite
        rejects as table names. Those get an ``m`` prefix."""

        def append_primitive(self, group, series, value, global_iteration):
            if group and group[0].isdigit():
                group = "m" + group
            super().append_primitive(group, series, value, global_iteration)

    return SqlSafeRecordKeeper


def recordable_statistics(obj) -> dict[str, float]:
    """The numbers an object lists in PML's ``_record_these`` (e.g. ``SmartBatchSampler``'s mined share)."""
    names = getattr(obj, "_record_these", None) or []
    values = {name: getattr(obj, name, None) for name in names}
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def settings_history(record_keeper) -> list[dict]:
    """The controlled settings per epoch, as recorded in ``controller_settings``."""
    table = "controller_settings"
    if not record_keeper.table_exists(table):
        return []
    rows = record_keeper.query(f"SELECT * FROM {table}", return_dict=True)
    epochs = rows.get(ITERATION, [])
    names = [k for k in rows if k not in ("id", ITERATION)]
    return [{"epoch": int(e), **{n: rows[n][i] for n in names}} for i, e in enumerate(epochs)]


def splits_not_yet_evaluated(hooks, tester, epoch: int, splits_to_eval: list) -> list:
    """PML 2.x's ``HookContainer.run_tester_separately`` expects PB's old split names; this
    is its skip rule for the ``(query, [references])`` form."""
    todo = []
    for query, refs in splits_to_eval:
        if len(hooks.get_accuracies_of_epoch(tester, query, epoch)) == 0:
            todo.append((query, list(refs)))
    return todo
