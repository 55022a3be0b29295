"""Perceiver Resampler: a variable number of vision features → a fixed number of visual tokens.

Flamingo (Alayrac et al. 2022, §2.1 and Fig. 5): learned latent queries cross-attend to the vision
encoder's patch features, with the keys and values computed from the concatenation of the features
and the latents; a stack of such attention + feed-forward layers yields ``num_latents`` (64) tokens
per image whatever the encoder's resolution. Flamingo adds learned time embeddings for the frames of
a video; here they index the image slot of the window (up to ``max_images``), as lucid
(flamingo_pytorch.py L55-112) does for its media axis.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from model.xattn import FeedForward

__all__ = ["PerceiverAttention", "PerceiverResampler"]


class PerceiverAttention(nn.Module):
    """Latents attend to concat(media, latents) (paper Fig. 5: ``kv = concat([x_f, x])``)."""

    def __init__(self, *, dim: int, heads: int = 8, dim_head: int = 64) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, media: Tensor, latents: Tensor) -> Tensor:
        """media [B, N, P, D] (P patches), latents [B, N, L, D] → [B, N, L, D]."""
        media, latents = self.norm_media(media), self.norm_latents(latents)
        q = rearrange(self.to_q(latents), "b n l (h d) -> b n h l d", h=self.heads)
        kv_in = torch.cat([media, latents], dim=-2)  # (B, N, P+L, D)
        k, v = rearrange(self.to_kv(kv_in), "b n s (kv h d) -> kv b n h s d", kv=2, h=self.heads)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, N, H, L, d); no mask: all keys real
        return self.to_out(rearrange(out, "b n h l d -> b n l (h d)"))


class PerceiverResampler(nn.Module):
    """[B, N, P, D] vision features → [B, N, num_latents, D] visual tokens."""

    def __init__(
        self,
        *,
        dim: int,
        depth: int = 6,
        heads: int = 8,
        dim_head: int = 64,
        num_latents: int = 64,
        max_images: int = 5,
        ff_mult: int = 4,
    ) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        self.media_pos = nn.Parameter(torch.randn(max_images, 1, dim))  # per image slot
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    PerceiverAttention(dim=dim, heads=heads, dim_head=dim_head),
                    FeedForward(dim=dim, mult=ff_mult),
                ]
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, media: Tensor) -> Tensor:
        """media [B, N, P, D] → [B, N, L, D]; N must not exceed ``max_images``."""
        bsz, n_img = media.shape[:2]
        if n_img > self.media_pos.shape[0]:
            raise ValueError(
                f"{n_img} images per sample, resampler built for {self.media_pos.shape[0]}"
            )
        media = media + self.media_pos[:n_img].to(media.dtype)
        latents = repeat(self.latents, "l d -> b n l d", b=bsz, n=n_img).to(media.dtype)
        for attn, ff in self.layers:
            latents = latents + attn(media, latents)
            latents = latents + ff(latents)
        return self.norm(latents)
