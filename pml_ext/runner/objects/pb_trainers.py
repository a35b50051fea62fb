"""What PB's API parsers added to each trainer, for PML 2.x's trainers (docs/runner.md, "Trainers").

- Every trainer but ``CascadedEmbeddings`` trains ``loss_funcs.metric_loss``: without it
  PML's trainers would fail mid-epoch, so that is a start-up error.
- ``TrainWithClassifier`` needs ``models.classifier`` and ``loss_funcs.classifier_loss``;
  without them PML would silently train the metric loss alone, so that is a start-up error.
- ``DeepAdversarialMetricLearning`` needs ``models.generator`` and the losses
  ``synth_loss`` and ``g_adv_loss`` (a ``TripletMarginLoss``): a start-up error otherwise.
- ``CascadedEmbeddings`` reads the top-level ``layers_to_extract`` (the trunk layers, one
  embedder each) and gets ``embedding_sizes``.
- ``UnsupervisedEmbeddingsUsingAugmentations`` gets the ``transforms.augmentation*``
  pipelines, no sampler, and raw (untransformed) training items.
"""
from __future__ import annotations

import inspect
from typing import Any

from ..config.config_error import ConfigError
from ..config.experiment_config import ExperimentConfig
from .registry import Registry

__all__ = ["PBTrainerRules"]


def _is(cls: Any, name: str) -> bool:
    return inspect.isclass(cls) and any(c.__name__ == name for c in cls.__mro__)


class PBTrainerRules:
    """The PB rules for the configured trainer.

    Args:
        config: the merged config.
        registry: resolves the trainer's class.
    """

    def __init__(self, config: ExperimentConfig, registry: Registry):
        self.config = config
        self.source = config.source_of("trainer")
        self.name, _ = registry.parse_spec(config.require("trainer", "config_general"), self.source, "trainer")
        self.cls = registry.get("trainer", self.name, self.source, "trainer")

    @property
    def cascaded(self) -> bool:
        return _is(self.cls, "CascadedEmbeddings")

    @property
    def unsupervised(self) -> bool:
        return _is(self.cls, "UnsupervisedEmbeddingsUsingAugmentations")

    def check(self) -> None:
        """Start-up errors for what the trainer needs and the config lacks."""
        models = self.config.get("models") or {}
        losses = self.config.get("loss_funcs") or {}
        need: list[tuple[str, str]] = []
        if _is(self.cls, "DeepAdversarialMetricLearning"):
            need = [("models", "generator"), ("loss_funcs", "synth_loss"), ("loss_funcs", "g_adv_loss")]
            what = "DAML trains a generator of hard negatives (PB: config_models with_daml, " \
                   "config_loss_and_miners with_daml, config_optimizers with_daml)"
        elif _is(self.cls, "TrainWithClassifier"):
            need = [("models", "classifier"), ("loss_funcs", "classifier_loss")]
            what = "TrainWithClassifier trains a classifier beside the metric loss: give models.classifier " \
                   "(e.g. {MLP: {layer_sizes: []}}: the embedding size and the number of classes are " \
                   "added) and loss_funcs.classifier_loss (e.g. {CrossEntropyLoss: {}}), plus a " \
                   "classifier_optimizer"
        elif self.cascaded:
            if not isinstance(self.config.get("layers_to_extract"), list):
                raise ConfigError(self.config.source_of("layers_to_extract"), "layers_to_extract",
                                  "CascadedEmbeddings needs the list of trunk layers to read "
                                  "(PB: config_models cascaded), e.g. [layer3, fc] for a resnet")
        elif self.unsupervised and not self.augmentations():
            raise ConfigError(self.config.source_of("transforms"), "transforms",
                              "UnsupervisedEmbeddingsUsingAugmentations needs transforms.augmentation1, ... "
                              "(PB: config_transforms unsupervised)")
        if not self.cascaded and "metric_loss" not in losses:
            raise ConfigError(self.config.source_of("loss_funcs"), "loss_funcs",
                              f"{self.name} trains loss_funcs.metric_loss, which is missing (the config has "
                              f"{', '.join(map(str, losses)) or 'none'}; metric_loss_0, metric_loss_1, ... are "
                              f"CascadedEmbeddings' names: PB's config_general with_cascaded)")
        missing = [f"{top}.{key}" for top, key in need
                   if key not in (models if top == "models" else losses)]
        if missing:
            raise ConfigError(self.source, f"trainer.{self.name}", f"missing {', '.join(missing)}: {what}")

    def augmentations(self) -> list[str]:
        return sorted(k for k in (self.config.get("transforms") or {}) if str(k).startswith("augmentation"))

    def layers_to_extract(self) -> list | None:
        return list(self.config.get("layers_to_extract")) if self.cascaded else None

    def trainer_kwargs(self, factory, embedding_sizes: list[int], getter_keys) -> dict:
        """Arguments PB's parsers passed to the trainer, over the config's values (as in PB)."""
        if self.cascaded:
            return {"embedding_sizes": embedding_sizes}
        if self.unsupervised:
            keys = list(getter_keys) if getter_keys else None
            setter = (lambda batch: {keys[0]: batch[0], keys[1]: batch[1]}) if keys else None
            return {"transforms": [factory.image_transform(k) for k in self.augmentations()],
                    "data_and_label_setter": setter, "sampler": None, "set_min_label_to_zero": False}
        return {}
