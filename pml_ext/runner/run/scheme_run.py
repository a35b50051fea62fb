"""One split scheme of an experiment: build its objects, resume or start, train, summarise.

``ExperimentRunner`` reads and checks the config, then runs one :class:`SchemeRun` per split
scheme: ``build()`` returns the objects it built, ``run()`` trains them. A scheme knows the
run through its :class:`~.run_context.RunContext` alone. Rank 0 evaluates, checkpoints and
records; every rank trains on its shard and waits for rank 0 at the end of each epoch
(docs/runner.md, "Distributed").
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any

import torch

from ..config.config_error import ConfigError
from ..objects.split_checks import check_batches, map_splits_to_eval
from ..state.checkpoint_store import CheckpointStore, trainer_objects
from ..state.run_records import batch_getter, recordable_statistics, settings_history
from ..state.run_state import RngStates, seed_epoch, stateful_objects
from .bank_source import BankSource
from .epoch_updater import EpochUpdater, unwrap
from .evaluate_only import evaluate_saved_models
from .pml_internals import (keep_with_models, name_reference_splits, plain_models, restart_epoch_stream,
                            stop_model_saving, wrap_accuracy_calculation)
from .rank_wait import RankZeroWait
from .run_context import RunContext
from .run_distribution import distribute, embed_training_set, wrap_models_for_ddp
from .run_hooks import build_hooks, check_untrained_accuracy
from .run_output import EpochProgress, log_native_output

__all__ = ["SchemeRun"]

LOGGER = logging.getLogger("pml_ext.runner")


class SchemeRun:
    """Train one split scheme of an experiment.

    Args:
        context: this process's rank, world size, device, seed, folders and flags.
        registry, trainer_rules: the run's ``Registry`` and its ``PBTrainerRules``.
        config, general, factory, manager: the merged config, its general settings, the
            object factory and the split manager.
        scheme_name, indices: the scheme and its ``{split: sample indices}``.
        train_data, eval_data: the data sets training and evaluation read from.
    """

    def __init__(self, context: RunContext, registry, trainer_rules, config, general: dict, factory, manager,
                 scheme_name: str, indices: dict, train_data, eval_data):
        self.context, self.registry, self.trainer_rules = context, registry, trainer_rules
        self.config, self.general, self.factory = config, general, factory
        self.manager, self.scheme_name, self.indices = manager, scheme_name, indices
        self.rank, self.distributed, self.seed, self.device = (context.rank, context.distributed, context.seed,
                                                               context.device)
        self.folder = context.scheme_folder(scheme_name)
        self.model_folder = os.path.join(self.folder, "saved_models")
        self.getter = batch_getter(manager.data_and_label_getter_keys)
        self.train_data, self.eval_data = train_data, eval_data
        self.sampler_history: list[dict] = []
        self.rng = RngStates()

    # ---- building -------------------------------------------------------------------------

    def build_training(self) -> None:
        """Data subsets, models, losses, miners, sampler, controllers, optimizers, updater."""
        config, factory, registry = self.config, self.factory, self.registry
        all_labels = torch.as_tensor(self.manager.labels_of(self.train_data))
        train_idx = torch.as_tensor(self.indices["train"], dtype=torch.long)
        self.train_labels = all_labels[train_idx]
        self.train_set = torch.utils.data.Subset(self.train_data, train_idx.tolist())
        self.eval_sets = {split: torch.utils.data.Subset(self.eval_data, list(map(int, idx)))
                          for split, idx in self.indices.items()}
        sample = self.getter(torch.utils.data.default_collate(
            [self.eval_sets["train"][i] for i in range(min(2, len(self.train_set)))]))[0]
        num_classes = len(torch.unique(self.train_labels))
        self.models = {k: v.to(self.device) for k, v in factory.models(
            sample, num_classes, self.trainer_rules.layers_to_extract()).items()}
        loss_funcs = factory.named_objects("loss_funcs", "loss", required=True, offered={
            "num_classes": num_classes, "embedding_size": factory.embedding_sizes[0]})
        mining_funcs = factory.named_objects("mining_funcs", "miner", required=False)
        for obj in list(loss_funcs.values()) + list(mining_funcs.values()):
            if isinstance(obj, torch.nn.Module):
                obj.to(self.device)
        self.trainer_name, trainer_kwargs = registry.parse_spec(
            config.require("trainer", "config_general"), config.source_of("trainer"), "trainer")
        batch_size = int(trainer_kwargs.get("batch_size", 32))
        # PB's parsers set these over the config's values (e.g. no sampler for unsupervised training)
        trainer_kwargs.update(self.trainer_rules.trainer_kwargs(factory, factory.embedding_sizes,
                                                                self.manager.data_and_label_getter_keys))
        self.trainer_kwargs = trainer_kwargs
        sampler = factory.sampler(self.train_labels, self.train_set, batch_size, mining_funcs, self.seed)
        check_batches(None if "sampler" in trainer_kwargs and trainer_kwargs["sampler"] is None else sampler,
                      len(self.train_set), batch_size, config.source_of("trainer"))
        self.controllers = factory.controllers({"mining_funcs": mining_funcs, "loss_funcs": loss_funcs,
                                                "models": self.models, "sampler": sampler})
        self.optimizers, self.lr_schedulers, self.clippers = factory.optimizers({**self.models, **loss_funcs})
        if self.distributed:
            loss_funcs, mining_funcs, sampler = distribute(loss_funcs, mining_funcs, sampler, len(self.train_set),
                                                           batch_size, self.seed, self.rank, self.context.world_size)
        self.loss_funcs, self.mining_funcs, self.sampler = loss_funcs, mining_funcs, sampler
        self.embedding_size = sum(factory.embedding_sizes)
        self.bank_source = self._bank_source()
        self.updater = EpochUpdater(mining_funcs, sampler, self.controllers, self.bank_source or self.embed_rows)

    def embed_rows(self, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A fresh embedding of the training set's ``rows`` (default all), by shards under DDP (collective)."""
        return embed_training_set(self.models, self.eval_sets["train"], self.train_labels, self.device, self.getter,
                                  self.rank, self.context.world_size, self.distributed, rows, self.embedding_size)

    def _bank_source(self) -> BankSource | None:
        """The ``embedding_bank`` the epoch updates read (bank_source), or ``None`` when the key is absent."""
        from ...index.embedding_bank import EmbeddingBank

        settings = self.general["embedding_bank"]
        if settings is None:
            return None
        bank = EmbeddingBank(len(self.train_set), self.embedding_size)
        return BankSource(bank, self.train_labels, self.embed_rows, settings, self.seed, self.device)

    def build_evaluation(self) -> None:
        """The tester (rank 0 only), PML's hooks with the record-keeper, the end-of-epoch hook."""
        config, registry = self.config, self.registry
        tester_name, tester_kwargs = registry.parse_spec(config.require("tester", "config_eval"),
                                                         config.source_of("tester"), "tester")
        reference_set = tester_kwargs.pop("reference_set", "compared_to_self")
        if not tester_kwargs.get("visualizer"):
            tester_kwargs.pop("visualizer", None)
        self.splits_to_eval = map_splits_to_eval(self.general["splits_to_eval"], reference_set,
                                                 list(self.indices), config.source_of("splits_to_eval"))
        self.hooks, self.record_keeper = build_hooks(registry, config, self.general, self.folder,
                                                     self.splits_to_eval, self.rank)
        self.tester, self.eval_hook = None, None
        if self.rank != 0:
            return
        tester = registry.build("tester", {tester_name: tester_kwargs}, config.source_of("tester"), "tester",
                                data_device=self.device, data_and_label_getter=self.getter,
                                end_of_testing_hook=self.hooks.end_of_testing_hook)
        name_reference_splits(tester, self.splits_to_eval)
        primary = self.hooks.primary_metric
        if primary not in tester.accuracy_calculator.get_curr_metrics():
            raise ConfigError(config.source_of("hook_container"), "hook_container.primary_metric",
                              f"'{primary}' is not computed by the accuracy calculator; it computes "
                              f"{', '.join(tester.accuracy_calculator.get_curr_metrics())}")
        # FAISS's k-means (NMI) warns on stderr at every evaluation of a small split: into run.log
        wrap_accuracy_calculation(tester, log_native_output)
        self.tester = tester
        self.eval_hook = self.hooks.end_of_epoch_hook(
            tester, self.eval_sets, self.model_folder, test_interval=self.general["save_interval"],
            patience=self.general["patience"], splits_to_eval=self.splits_to_eval)

    def build_trainer(self) -> None:
        """PML's trainer, the checkpoint store and what it saves, the wait for rank 0."""
        self.trainer = self.registry.build(
            "trainer", {self.trainer_name: self.trainer_kwargs}, self.config.source_of("trainer"), "trainer",
            models=self.models, optimizers=self.optimizers, loss_funcs=self.loss_funcs,
            mining_funcs=self.mining_funcs, dataset=self.train_set, sampler=self.sampler, data_device=self.device,
            lr_schedulers=self.lr_schedulers, gradient_clippers=self.clippers or None,
            dataset_labels=self.train_labels.numpy(), data_and_label_getter=self.getter,
            end_of_iteration_hook=self.end_of_iteration, end_of_epoch_hook=self.end_of_epoch)
        if self.bank_source is not None:
            self.bank_source.attach(self.trainer, self.config.source_of("embedding_bank"))
        # Saved with the models: a resumed run continues exactly (mining_funcs are saved as such).
        run_state = stateful_objects(self.sampler, self.mining_funcs, self.updater.saveable_controllers, self.rng,
                                     self.bank_source)
        keep_with_models(self.trainer, self.hooks, "run_state",
                         {k: v for k, v in run_state.items() if not k.startswith("miner_")})
        self.rank_zero_wait = RankZeroWait(self.general["distributed_timeout_seconds"],
                                           self.general["distributed_eval_timeout_seconds"])
        stop_model_saving(self.hooks)  # the checkpoint store writes (and resumes from) the models
        rank0 = self.rank == 0
        self.store = CheckpointStore(self.model_folder, os.path.join(self.folder, "saved_csvs") if rank0 else None,
                                     self.record_keeper.save_records if rank0 else None)

    def checkpoint_objects(self) -> dict:
        """Everything a checkpoint saves and a resume restores: ``{file name stem: object with
        state_dict/load_state_dict}`` (a new stateful object is one more entry)."""
        return trainer_objects(self.trainer, self.hooks.saveable_trainer_objects)

    # ---- the trainer's hooks --------------------------------------------------------------

    def end_of_iteration(self, trainer) -> None:
        self.updater.end_of_iteration(trainer)
        if self.rank == 0:
            self.hooks.end_of_iteration_hook(trainer)

    def end_of_epoch(self, trainer) -> bool:
        """Refresh what is updated each epoch, evaluate and checkpoint (rank 0), agree on stopping."""
        from ...utils.distributed import broadcast_object

        sampler_stats = recordable_statistics(unwrap(self.sampler))  # the epoch just trained, before refresh
        if self.bank_source is not None:  # every rank: the refresh and the checkpoint take the union
            self.bank_source.gather()
        settings = self.updater.end_of_epoch(trainer)
        # The next epoch's stream, the same on every rank; kept (and saved) through rank 0's evaluation.
        seed_epoch(self.seed, int(trainer.epoch))
        self.rng.snapshot()
        keep_training = True
        if self.rank == 0:
            self._record_epoch(trainer, sampler_stats, settings)
            with plain_models(trainer, self.models):
                keep_training = self.eval_hook(trainer) is not False
                score = self._checkpoint(trainer)
            self.progress.update(int(trainer.epoch), score)
        self.rng.restore()
        # Every rank must stop at the same epoch, or the others would wait forever in a collective;
        # they wait for rank 0's evaluation and checkpoint first, on the long deadline.
        self.rank_zero_wait.wait()
        keep_training = broadcast_object(keep_training)
        restart_epoch_stream(trainer)  # every epoch a fresh pass over the sampler, as after a resume
        return keep_training

    def _record_epoch(self, trainer, sampler_stats: dict, settings: dict) -> None:
        if sampler_stats:
            self.record_keeper.update_records(sampler_stats, trainer.epoch, parent_name="sampler_statistics")
            self.sampler_history.append({"epoch": int(trainer.epoch), **sampler_stats})
        if self.bank_source is not None and self.bank_source.statistics:
            self.record_keeper.update_records(self.bank_source.statistics, trainer.epoch, parent_name="embedding_bank")
        if self.controllers:
            self.record_keeper.update_records(settings, trainer.epoch, parent_name="controller_settings")
            self.record_keeper.update_records({n: c for n, (c, _, _) in self.controllers.items()}, trainer.epoch)

    def _checkpoint(self, trainer) -> str:
        """Save every ``save_interval`` epochs (after the evaluation); the progress line's score."""
        if trainer.epoch % self.general["save_interval"] != 0:
            return ""
        validation = self.hooks.validation_split_name
        best_epoch, best = self.hooks.get_best_epoch_and_accuracy(self.tester, validation, (-1, 0))
        self.store.save(int(trainer.epoch), self.checkpoint_objects(), best_epoch)
        score = f"best {validation} {self.hooks.primary_metric} {best:.4f} at epoch {best_epoch}"
        LOGGER.info("%s: epoch %d saved; %s", self.scheme_name, trainer.epoch, score)
        return score

    # ---- running --------------------------------------------------------------------------

    def build(self) -> dict[str, Any]:
        """Build everything the scheme trains and tests with; returns it as ``{"models",
        "loss_funcs", "mining_funcs", "sampler", "controllers", "trainer", "tester", "hooks",
        "eval_sets", "embedding_bank"}`` (the runner keeps it for inspection; the bank is
        ``None`` without the ``embedding_bank`` key)."""
        self.start_time = time.time()
        seed_epoch(self.seed)
        self.build_training()
        self.build_evaluation()
        self.build_trainer()
        return {"models": self.models, "loss_funcs": self.loss_funcs, "mining_funcs": self.mining_funcs,
                "sampler": self.sampler, "controllers": self.controllers, "trainer": self.trainer,
                "tester": self.tester, "hooks": self.hooks, "eval_sets": self.eval_sets,
                "embedding_bank": None if self.bank_source is None else self.bank_source.bank}

    def run(self) -> tuple[dict, dict | None]:
        """``(info, report)`` after :meth:`build`: the scheme's summary, and (rank 0) its
        accuracies and losses for the experiment's report."""
        if self.context.evaluate:
            return {"evaluation": evaluate_saved_models(self.context.evaluate, self.tester, self.models,
                                                        self.eval_sets, self.folder, self.splits_to_eval,
                                                        self.device)}, None
        start_epoch = self._start_epoch()
        last_epoch = self._train(start_epoch)
        info = {"start_epoch": start_epoch, "last_epoch": last_epoch, "wall_time": time.time() - self.start_time,
                "sampler_history": self.sampler_history}
        return (info, None) if self.rank != 0 else self._summary(info)

    def _start_epoch(self) -> int:
        """Resume from the last complete checkpoint, or check the untrained accuracy (rank 0)."""
        start_epoch = 1
        if self.context.resume_training:
            start_epoch = self.store.resume(self.checkpoint_objects(), self.device, clean_up=self.rank == 0) + 1
            LOGGER.info("%s: resuming at epoch %d", self.scheme_name, start_epoch)
            if start_epoch > 1 and not self.rng.loaded:  # a checkpoint saved without the run's states
                seed_epoch(self.seed, start_epoch - 1)
                if callable(getattr(unwrap(self.sampler), "set_epoch", None)):
                    unwrap(self.sampler).set_epoch(start_epoch)
                self.updater.refresh()
        if start_epoch == 1 and self.rank == 0 and self.general["check_untrained_accuracy"]:
            check_untrained_accuracy(self.hooks, self.tester, self.eval_sets, self.models, self.splits_to_eval,
                                     self.general)
            self.record_keeper.save_records()  # PML's "new best" compares with the saved records: epoch 0 is one
        self.rank_zero_wait.wait()  # for rank 0's untrained-accuracy check
        if self.distributed:
            wrap_models_for_ddp(self.trainer, self.device)  # after loading: DDP broadcasts rank 0's weights
        return start_epoch

    def _train(self, start_epoch: int) -> int:
        """Train from ``start_epoch``; the last epoch trained."""
        num_epochs = self.general["num_epochs_train"]
        if start_epoch > num_epochs:
            LOGGER.info("%s: already trained for %d epochs (num_epochs_train=%d)", self.scheme_name,
                        start_epoch - 1, num_epochs)
            return start_epoch - 1
        self.progress = EpochProgress(f"{self.context.experiment_name}/{self.scheme_name}", start_epoch, num_epochs)
        try:
            self.trainer.train(start_epoch=start_epoch, num_epochs=num_epochs)
        finally:
            self.progress.close()
        return int(self.trainer.epoch)

    def _summary(self, info: dict[str, Any]) -> tuple[dict, dict]:
        hooks, tester = self.hooks, self.tester
        self.record_keeper.save_records()
        validation = hooks.validation_split_name
        best_epoch, best = hooks.get_best_epoch_and_accuracy(tester, validation, (-1, 0))  # a trained epoch
        info.update(best_epoch=best_epoch, best_accuracy=best)
        accuracies = hooks.get_accuracy_history(tester, validation, return_all_metrics=True)
        info["split_histories"] = {q: hooks.get_accuracy_history(tester, q, return_all_metrics=True)
                                   for q, _ in self.splits_to_eval}
        settings = settings_history(self.record_keeper)
        info["settings_history"] = settings
        return info, {"primary_metric": hooks.primary_metric, "accuracies": accuracies,
                      "losses": hooks.get_loss_history(), "settings": settings}
