"""Run powerful-benchmarker configs on PML 2.x with pml_ext classes (``pml-ext run``)."""
from .report.bayesian_search import BayesianSearch
from .state.checkpoint_store import CheckpointError, CheckpointStore
from .report.comparison_runner import ComparisonRunner
from .config.config_error import ConfigError
from .config.config_reader import ConfigReader
from .run.epoch_updater import EpochUpdater
from .config.experiment_config import ExperimentConfig
from .state.experiment_lock import ExperimentLock, ExperimentLocked
from .run.experiment_runner import ExperimentRunner
from .objects.npz_features import NpzFeatures
from .objects.registry import Registry, default_registry, register
from .objects.split_manager import ClassDisjointSplitManager
