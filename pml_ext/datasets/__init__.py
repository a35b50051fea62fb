from .digits import Digits, digits_split
