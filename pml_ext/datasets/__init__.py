from .digits import Digits, digits_split
from .glyphs import Glyphs, glyphs_split
