from .mlp import MLP
from .glyph_cnn import GlyphCNN
from .glyph_pool_cnn import GlyphPoolCNN
