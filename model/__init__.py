"""The Flamingo model: Perceiver Resampler, masked tanh-gated cross-attention, HF LM wrapper.

No data loading and no file I/O here except ``Flamingo.save_trainable``/``Flamingo.load``; this
package never imports ``m3w_builder`` or ``pipelines`` (DESIGN §1).
"""

from model.flamingo import (
    EOC_TOKEN,
    IMAGE_TOKEN,
    Flamingo,
    FlamingoConfig,
    add_flamingo_tokens,
    build_image_processor,
)
from model.masks import attachment_mask
from model.resampler import PerceiverResampler
from model.xattn import GatedCrossAttentionBlock, MaskedCrossAttention

__all__ = [
    "EOC_TOKEN",
    "IMAGE_TOKEN",
    "Flamingo",
    "FlamingoConfig",
    "GatedCrossAttentionBlock",
    "MaskedCrossAttention",
    "PerceiverResampler",
    "add_flamingo_tokens",
    "attachment_mask",
    "build_image_processor",
]
