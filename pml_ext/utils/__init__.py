"""Helpers shared by pml_ext's classes; names are imported on first use."""
from .._lazy import lazy_exports
# Eager: the function shares its module's name, and an imported submodule would shadow a lazy name.
from .ann_quality import ann_quality

_EXPORTS = {
    "check_embeddings": "checks", "check_finite": "checks", "check_labels": "checks", "check_positive": "checks",
    "embed_dataset": "experiment", "evaluate_embeddings": "experiment", "seed_everything": "experiment",
    "train_metric_model": "experiment", "compute_embeddings": "inference",
    "AccuracyCalculator": "accuracy_calculator",
}
__all__ = sorted([*_EXPORTS, "ann_quality"])
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
