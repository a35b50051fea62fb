"""torch's classification losses, resolvable under ``loss_funcs`` (PB's ``classifier_loss:
{CrossEntropyLoss: ...}`` for ``TrainWithClassifier``); PML's losses are found first."""
from torch.nn import BCEWithLogitsLoss, CrossEntropyLoss, NLLLoss

__all__ = ["BCEWithLogitsLoss", "CrossEntropyLoss", "NLLLoss"]
