from .checks import check_embeddings, check_finite, check_labels, check_positive
from .experiment import embed_dataset, evaluate_embeddings, seed_everything, train_metric_model
from .ann_quality import ann_quality
from .inference import compute_embeddings
from .accuracy_calculator import AccuracyCalculator
