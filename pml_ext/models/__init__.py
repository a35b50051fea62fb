from .mlp import MLP
from .glyph_cnn import GlyphCNN
