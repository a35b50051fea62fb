"""pml_ext: lifted structured loss, smart mining and isometry-aware hard mining for
pytorch-metric-learning. Every public class is importable from here."""

__version__ = "0.1.0"

from .datasets import Digits, digits_split
from .models import MLP
from .samplers.distributed_shard_sampler import DistributedShardSampler
from .losses.lifted_structure_loss import LiftedStructureLoss
