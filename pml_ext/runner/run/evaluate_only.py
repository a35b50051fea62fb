"""PB's ``--evaluate``: test a finished experiment's saved models, without training.

For each split scheme, the models saved at the best epoch (PML's ``trunk_best<epoch>.pth``,
``embedder_best<epoch>.pth``, ...; ``--evaluate latest``: the last saved epoch) are loaded
into freshly built models and tested on ``splits_to_eval`` (``--splits_to_eval [test]``
to report the test split). The accuracies go to the log and to
``<scheme>/evaluation_<best|latest>.yaml`` (an earlier evaluation is kept: see
:func:`write_evaluation`); the experiment's own records are left untouched.
"""
from __future__ import annotations

import logging
import os

import yaml

__all__ = ["EVALUATE_CHOICES", "evaluate_saved_models", "write_evaluation"]

LOGGER = logging.getLogger("pml_ext.runner")
EVALUATE_CHOICES = ("best", "latest")


def evaluate_saved_models(which: str, tester, models: dict, eval_sets: dict, scheme_folder: str,
                          splits_to_eval: list, device) -> dict:
    """Load the ``which`` saved models of one scheme and test them.

    Args:
        which: ``"best"`` or ``"latest"``.
        tester: a PML tester (its end-of-testing hook is not called: no records change).
        models: the scheme's freshly built models, ``{"trunk", "embedder", ...}``.
        eval_sets: ``{split name: dataset}``.
        scheme_folder: the split scheme's folder (holds ``saved_models/``).
        splits_to_eval: PML's ``[(query, [references])]``.
        device: where to load the weights.

    Returns:
        ``{"epoch": int, "accuracies": {split key: {metric: float}}}``.
    """
    from pytorch_metric_learning.utils import common_functions as pml_cf

    if which not in EVALUATE_CHOICES:
        raise ValueError(f"evaluate must be one of {', '.join(EVALUATE_CHOICES)}, got {which!r}")
    model_folder = os.path.join(scheme_folder, "saved_models")
    epoch, suffix = pml_cf.latest_version(model_folder, "trunk_*.pth", best=which == "best")
    if not epoch:
        raise ValueError(f"evaluate: no saved {which} models in {model_folder}; train the experiment first")
    pml_cf.load_dict_of_models({k: v for k, v in models.items() if k in ("trunk", "embedder")}, suffix,
                               model_folder, device, log_if_successful=True)
    hook, tester.end_of_testing_hook = tester.end_of_testing_hook, None
    try:
        accuracies = tester.test(eval_sets, epoch, models["trunk"], models["embedder"], splits_to_eval)
    finally:
        tester.end_of_testing_hook = hook
    result = {"epoch": int(epoch), "models": which,
              "accuracies": {str(k): {m: float(v) for m, v in acc.items() if _is_number(v)}
                             for k, acc in accuracies.items()}}
    write_evaluation(scheme_folder, which, result)
    LOGGER.info("Evaluated the %s models (epoch %d) of %s: %s", which, epoch, scheme_folder, result["accuracies"])
    return result


def write_evaluation(scheme_folder: str, which: str, result: dict) -> str:
    """Write ``evaluation_<which>.yaml`` without losing an earlier evaluation: the same saved
    models evaluated again keep the splits evaluated before (another ``splits_to_eval``); an
    evaluation of other models (another epoch, after a resume) is kept as
    ``evaluation_<which>_epoch<E>.yaml``."""
    path = os.path.join(scheme_folder, f"evaluation_{which}.yaml")
    if os.path.isfile(path):
        with open(path) as f:
            earlier = yaml.safe_load(f) or {}
        if earlier.get("epoch") == result["epoch"]:
            result = {**result, "accuracies": {**earlier.get("accuracies", {}), **result["accuracies"]}}
        else:
            kept, n = os.path.join(scheme_folder, f"evaluation_{which}_epoch{earlier.get('epoch')}.yaml"), 1
            while os.path.exists(kept):
                kept, n = os.path.join(scheme_folder, f"evaluation_{which}_epoch{earlier.get('epoch')}_{n}.yaml"), n + 1
            os.replace(path, kept)
    with open(path + ".tmp", "w") as f:
        yaml.safe_dump(result, f, sort_keys=False)
    os.replace(path + ".tmp", path)
    return path


def _is_number(v) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True
