"""Global embedding index: FAISS k-NN over the whole training set (FAISS is imported on first use)."""
from .._lazy import lazy_exports

_EXPORTS = {"EmbeddingIndex": "embedding_index"}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
