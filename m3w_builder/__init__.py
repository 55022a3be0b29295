"""m3w_builder: HTML in, interleaved image/text shard records out. Pure Python, no Ray import."""

from m3w_builder.document import SCHEMA, Document, ImageNode, RawPage, TextNode, document_key
from m3w_builder.reasons import Counts, Skip

__all__ = [
    "SCHEMA",
    "Counts",
    "Document",
    "ImageNode",
    "RawPage",
    "Skip",
    "TextNode",
    "document_key",
]
