"""Run powerful-benchmarker configs on PML 2.x with pml_ext classes (``pml-ext run``)."""
from .config.config_error import ConfigError
from .config.config_reader import ConfigReader
from .config.experiment_config import ExperimentConfig
from .objects.npz_features import NpzFeatures
from .objects.registry import Registry, default_registry, register
from .objects.split_manager import ClassDisjointSplitManager
from .report.bayesian_search import BayesianSearch
from .report.comparison_runner import ComparisonRunner
from .run.epoch_updater import EpochUpdater
from .run.experiment_runner import ExperimentRunner
from .state.checkpoint_store import CheckpointError, CheckpointStore
from .state.experiment_lock import ExperimentLock, ExperimentLocked
