"""The run's ``embedding_bank``: epoch updates read the training passes' embeddings.

With ``embedding_bank`` in the general config, the scheme keeps an ``EmbeddingBank`` of the
training set that ``BankWriter`` fills from the trainer's own forward passes, and the epoch
updates (``EpochUpdater``) get their ``[N, d]`` embeddings from it instead of a separate
pass over the training set:

- ``source: bank`` (the default): the bank's rows; rows no training batch has written yet
  (the first epoch of a sampler that does not visit every sample, say) are embedded fresh,
  those rows only, so every consumer still gets all N rows;
- ``source: fresh``: the fresh pass as before; the bank is still filled, saved and measured,
  to compare the two.

At each refresh the bank's staleness is measured on ``staleness_sample`` rows (a fixed seeded
order of the training set, its first written rows), embedded fresh: the mean bank-vs-fresh
distance and the recall of their ``staleness_k``-NN graph (``EmbeddingBank.staleness``).
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Mapping

import torch

from ...index.embedding_bank import EmbeddingBank
from ..config.config_error import ConfigError

__all__ = ["BANK_DEFAULTS", "BankSource", "check_bank_settings"]

LOGGER = logging.getLogger("pml_ext.runner")

BANK_DEFAULTS = {"source": "bank", "staleness_sample": 512, "staleness_k": 10}
_SOURCES = ("bank", "fresh")
# Trainers whose training step embeds each loaded batch once, row for row, through
# compute_embeddings (what BankWriter hooks); a subclass may embed differently.
_BANK_TRAINERS = ("MetricLossOnly", "TrainWithClassifier", "CascadedEmbeddings")


def check_bank_settings(value: Any, source: str) -> dict | None:
    """The ``embedding_bank`` general key with defaults, or ``None`` (absent: the fresh pass,
    no bank); a ``ConfigError`` names the key and its file."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigError(source, "embedding_bank", "must be null or a mapping {source: bank | fresh, "
                                                    f"staleness_sample: N, staleness_k: k}}, got {value!r}")
    unknown = sorted(set(value) - set(BANK_DEFAULTS))
    if unknown:
        raise ConfigError(source, f"embedding_bank.{unknown[0]}",
                          f"unknown key; embedding_bank takes {', '.join(BANK_DEFAULTS)}")
    out = {**BANK_DEFAULTS, **value}
    if out["source"] not in _SOURCES:
        raise ConfigError(source, "embedding_bank.source", f"must be 'bank' or 'fresh', got {out['source']!r}")
    # staleness needs 2 rows (a k-NN graph of the sample); 0 turns it off
    for key, allowed, what in (("staleness_sample", lambda n: n == 0 or n >= 2, "0 (not measured) or an integer >= 2"),
                               ("staleness_k", lambda n: n >= 1, "an integer >= 1")):
        number = out[key]
        if isinstance(number, bool) or not isinstance(number, int) or not allowed(number):
            raise ConfigError(source, f"embedding_bank.{key}", f"must be {what}, got {number!r}")
    return out


class BankSource:
    """The embedding function of the epoch updates when ``embedding_bank`` is set.

    Args:
        bank: this rank's ``EmbeddingBank`` of the training set (N rows).
        labels: ``LongTensor[N]``, the training labels in dataset order.
        embed_rows: ``embed_rows(rows: LongTensor[n]) -> (Tensor[n, d], labels)``, a fresh
            embedding of those dataset rows (collective under DDP: every rank passes the same rows).
        settings: the checked ``embedding_bank`` settings.
        seed: the run's seed (the order staleness samples are taken in).
        device: where the embeddings and labels are handed to the updates.

    Attributes:
        statistics: the last refresh's ``{staleness_mean_distance, staleness_recall,
            written_share, unwritten_rows, fresh_rows}`` (``{}`` until one); the two
            staleness figures are missing when fewer than 2 rows are written or
            ``staleness_sample`` is 0.
    """

    def __init__(self, bank: EmbeddingBank, labels: torch.Tensor,
                 embed_rows: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], settings: dict,
                 seed: int, device: torch.device | str):
        self.bank, self.labels, self.embed_rows = bank, labels, embed_rows
        self.settings, self.device = dict(settings), device
        self.order = torch.randperm(bank.num_rows, generator=torch.Generator().manual_seed(int(seed)))
        self.gathered: EmbeddingBank | None = None
        self.statistics: dict[str, float] = {}

    def attach(self, trainer: Any, source: str) -> None:
        """Fill the bank from ``trainer``'s training steps (``BankWriter``); ``source`` names the config file."""
        from ...hooks.bank_writer import BankWriter

        if type(trainer).__name__ not in _BANK_TRAINERS:
            raise ConfigError(source, "embedding_bank", f"needs a trainer that embeds every training batch once "
                                                        f"({', '.join(_BANK_TRAINERS)}), got {type(trainer).__name__}")
        try:
            BankWriter(self.bank).attach(trainer)
        except ValueError as exc:
            raise ConfigError(source, "embedding_bank", str(exc)) from exc

    def gather(self) -> EmbeddingBank:
        """The bank of all ranks (collective: every rank calls it once an epoch, after training it)."""
        self.gathered, self.statistics = self.bank.gathered(), {}
        return self.gathered

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embeddings: Tensor[N, d], labels: LongTensor[N])`` on ``device`` for the epoch updates."""
        bank = self.gathered if self.gathered is not None else self.gather()
        missing = (~bank.filled).nonzero().flatten()
        sample = self._staleness_rows(bank)
        if self.settings["source"] == "fresh":
            embeddings = self.embed_rows(torch.arange(bank.num_rows))[0].cpu()
            fresh_sample, fresh_rows = embeddings[sample], bank.num_rows
        else:
            embeddings = bank.embeddings.clone()
            wanted = torch.cat([missing, sample])
            fresh = self.embed_rows(wanted)[0].cpu() if wanted.numel() else embeddings[:0]
            embeddings[missing] = fresh[:missing.numel()]
            fresh_sample, fresh_rows = fresh[missing.numel():], wanted.numel()
            if missing.numel():
                LOGGER.info("embedding_bank: %d of %d rows never written by a training batch, embedded fresh",
                            missing.numel(), bank.num_rows)
        self.statistics = {"written_share": 1.0 - missing.numel() / bank.num_rows,
                           "unwritten_rows": float(missing.numel()), "fresh_rows": float(fresh_rows)}
        if sample.numel():
            report = bank.staleness(sample, fresh_sample, k=self.settings["staleness_k"])
            self.statistics.update(staleness_mean_distance=report["mean_distance"], staleness_recall=report["recall"])
        return embeddings.to(self.device), self.labels.to(self.device)

    def _staleness_rows(self, bank: EmbeddingBank) -> torch.Tensor:
        """The first ``staleness_sample`` written rows in the seeded order: ``LongTensor[Q]`` (empty when < 2)."""
        rows = self.order[bank.filled[self.order]][:self.settings["staleness_sample"]]
        return rows if rows.numel() >= 2 else rows[:0]

    # ---- state: the gathered bank, so that every rank resumes from the union --------------
    def state_dict(self) -> dict:
        return (self.gathered if self.gathered is not None else self.bank).state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.bank.load_state_dict(state)
        self.gathered = self.bank.copy()  # every rank loaded the same union
