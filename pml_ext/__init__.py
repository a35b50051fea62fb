"""pml_ext: lifted structured loss, smart mining and isometry-aware hard mining for
pytorch-metric-learning. Every public class is importable from here."""

__version__ = "0.1.0"

from .datasets import Digits, digits_split, Glyphs, glyphs_split
from .models import MLP, GlyphCNN
from .samplers.distributed_shard_sampler import DistributedShardSampler
from .losses.lifted_structure_loss import LiftedStructureLoss
from .index.embedding_index import EmbeddingIndex
from .miners.smart_triplets import smart_triplets
from .miners.smart_miner import SmartMiner
from .samplers.smart_batch_sampler import SmartBatchSampler
from .losses.global_loss import GlobalLoss
from .losses.ratio_triplet_loss import RatioTripletLoss
from .utils.inference import compute_embeddings
from .samplers.hard_neighbor_sampler import HardNeighborSampler
from .runner.registry import register
from .runner.npz_features import NpzFeatures
from .runner.split_manager import ClassDisjointSplitManager
from .runner.experiment_runner import ExperimentRunner
from .runner.comparison_runner import ComparisonRunner
from .runner.bayesian_search import BayesianSearch
from .runner.unsupervised_trainer import UnsupervisedEmbeddingsUsingAugmentations
from .runner.pb_models import LayerExtractor, ListOfModels
from .runner.image_folders import CUB200, Cars196, StanfordOnlineProducts, ImageFolder
from .hooks.adaptive_controller import AdaptiveController
from .hooks.fraction_active_meter import FractionActiveMeter
from .hooks.control_rule import ControlRule
from .hooks.least_squares_rule import LeastSquaresRule
from .hooks.proportional_rule import ProportionalRule
from .miners.isometric_hard_miner import IsometricHardMiner
from .utils.accuracy_calculator import AccuracyCalculator
