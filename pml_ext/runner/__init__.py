"""Run powerful-benchmarker configs on PML 2.x with pml_ext classes (``pml-ext run``)."""
from .bayesian_search import BayesianSearch
from .checkpoint_store import CheckpointError, CheckpointStore
from .comparison_runner import ComparisonRunner
from .config_error import ConfigError
from .config_reader import ConfigReader
from .epoch_updater import EpochUpdater
from .experiment_config import ExperimentConfig
from .experiment_lock import ExperimentLock, ExperimentLocked
from .experiment_runner import ExperimentRunner
from .npz_features import NpzFeatures
from .registry import Registry, default_registry, register
from .split_manager import ClassDisjointSplitManager
