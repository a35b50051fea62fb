"""pml_ext: lifted structured loss, smart mining and isometry-aware hard mining for
pytorch-metric-learning. Every public class is importable from here.

Names are imported on first use (PEP 562 module ``__getattr__``): ``import pml_ext`` loads
neither torch, scikit-learn, FAISS, YAML nor the runner until a name that needs them is used.
"""
from __future__ import annotations

from ._lazy import lazy_exports

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "Digits": "datasets", "digits_split": "datasets", "Glyphs": "datasets", "glyphs_split": "datasets",
    "MLP": "models", "GlyphCNN": "models", "GlyphPoolCNN": "models",
    "EpochSampler": "samplers.epoch_sampler",
    "DistributedShardSampler": "samplers.distributed_shard_sampler",
    "HardNeighborSampler": "samplers.hard_neighbor_sampler",
    "SmartBatchSampler": "samplers.smart_batch_sampler",
    "ClassHardBatchSampler": "samplers.class_hard_batch_sampler",
    "LiftedStructureLoss": "losses.lifted_structure_loss",
    "GlobalLoss": "losses.global_loss",
    "RatioTripletLoss": "losses.ratio_triplet_loss",
    "EmbeddingIndex": "index.embedding_index",
    "EmbeddingBank": "index.embedding_bank",
    "BankWriter": "hooks.bank_writer",
    "smart_triplets": "miners.smart_triplets",
    "SmartMiner": "miners.smart_miner",
    "IsometricHardMiner": "miners.isometric_hard_miner",
    "compute_embeddings": "utils.inference",
    "AccuracyCalculator": "utils.accuracy_calculator",
    "register": "runner.objects.registry",
    "NpzFeatures": "runner.objects.npz_features",
    "ClassDisjointSplitManager": "runner.objects.split_manager",
    "ExperimentRunner": "runner.run.experiment_runner",
    "ComparisonRunner": "runner.report.comparison_runner",
    "BayesianSearch": "runner.report.bayesian_search",
    "UnsupervisedEmbeddingsUsingAugmentations": "runner.objects.unsupervised_trainer",
    "LayerExtractor": "runner.objects.pb_models", "ListOfModels": "runner.objects.pb_models",
    "CUB200": "runner.objects.image_folders", "Cars196": "runner.objects.image_folders",
    "StanfordOnlineProducts": "runner.objects.image_folders", "ImageFolder": "runner.objects.image_folders",
    "CheckpointError": "runner.state.checkpoint_store", "CheckpointStore": "runner.state.checkpoint_store",
    "ExperimentLock": "runner.state.experiment_lock", "ExperimentLocked": "runner.state.experiment_lock",
    "AdaptiveController": "hooks.adaptive_controller",
    "FractionActiveMeter": "hooks.fraction_active_meter",
    "LinearSchedule": "hooks.linear_schedule",
    "ControlRule": "hooks.control_rule",
    "LeastSquaresRule": "hooks.least_squares_rule",
    "ProportionalRule": "hooks.proportional_rule",
}
_SUBPACKAGES = ("datasets", "hooks", "index", "losses", "miners", "models", "runner", "samplers", "utils")

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS, _SUBPACKAGES)
