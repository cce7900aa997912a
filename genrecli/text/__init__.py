"""Scores and lyrics as text, and text encoders (frozen transformer over 512-token clips, TF-IDF)."""

from genrecli.text.convert import SCORE_FORMATS, score_format, score_to_text, strip_metadata_description
from genrecli.text.encoders import ENCODER_NAMES, TfidfEncoder, TransformerEncoder, make_encoder

__all__ = [
    "ENCODER_NAMES",
    "SCORE_FORMATS",
    "TfidfEncoder",
    "TransformerEncoder",
    "make_encoder",
    "score_format",
    "score_to_text",
    "strip_metadata_description",
]
