"""Global embedding index: FAISS k-NN over the whole training set."""
from .embedding_index import EmbeddingIndex
