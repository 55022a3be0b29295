"""Masked cross-attention from text tokens to visual tokens, and the gated xattn-dense block.

Flamingo (Alayrac et al. 2022, §2.2, Fig. 4) inserts ``GATED XATTN-DENSE`` blocks between the frozen
LM layers: cross-attention to the resampled visual tokens, then a feed-forward, each added to the
residual stream behind ``tanh(gate)`` with the gate initialised at 0, so that at initialisation the
model is exactly the frozen LM.

Which images a token may attend to comes from ``model.masks.attachment_mask`` as a bool [B, T, N].
A token that sees no image gets exactly 0 (DESIGN §4): rows are gated explicitly, never left to a
softmax over an all-masked row (NaN on some SDPA kernels).

Two kernels compute the same function:

- :func:`dense_masked_attention`, the reference, is OpenFlamingo's formulation (src/helpers.py
  L196-229): scores of every token against all N·L visual tokens, masked. It materialises
  [B, H, T, N·L] scores.
- :func:`fast_masked_attention` exploits the structure: a token sees one image (per-document draws)
  or a few (per-image draws), and the tokens that see an image are a chunk of text. It groups the
  (token, image) pairs by image into blocks of at most ``block`` queries and attends each block to its
  image's L latents only, so compute and memory scale with T·L rather than T·N·L. When a token sees
  several images the per-image results are merged with their log-sum-exps, which is exactly the joint
  softmax over the union of the seen images' latents.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

__all__ = [
    "FeedForward",
    "GatedCrossAttentionBlock",
    "MaskedCrossAttention",
    "dense_masked_attention",
    "fast_masked_attention",
]

XattnImpl = Literal["fast", "dense"]


def dense_masked_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """Reference kernel. q [B, T, H, d]; k, v [B, N, L, H, d]; mask [B, T, N] bool → [B, T, H, d]."""
    n_lat = k.shape[2]
    scores = torch.einsum("bthd,bnlhd->bhtnl", q, k) / math.sqrt(q.shape[-1])
    scores = rearrange(scores, "b h t n l -> b h t (n l)")  # (B, H, T, N·L)
    full = mask[:, None, :, :, None].expand(-1, -1, -1, -1, n_lat).flatten(-2)  # (B, 1, T, N·L)
    # a finite fill keeps all-masked rows finite (uniform); they are zeroed right after
    scores = scores.masked_fill(~full, torch.finfo(scores.dtype).min)
    attn = scores.softmax(dim=-1) * mask.any(-1)[:, None, :, None].to(scores.dtype)
    v = rearrange(v, "b n l h d -> b h (n l) d")
    return rearrange(attn @ v, "b h t d -> b t h d")


def _pair_blocks(mask: Tensor, block: int | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Group the (token, image) pairs of ``mask`` [B, T, N] by image into blocks of queries.

    Returns ``token`` [NB, S] (flat index b·T + t), ``valid`` [NB, S], ``image`` [NB] (flat index
    b·N + n) and ``count_per_token`` [B·T]. S is the block size: by default the mean number of tokens
    per seen image rounded up to a power of two in [16, 128], so that padding stays small.
    """
    bsz, seq, n_img = mask.shape
    pairs = mask.transpose(1, 2).nonzero()  # (P, 3): (b, n, t), sorted by b, then n, then t
    group = pairs[:, 0] * n_img + pairs[:, 1]  # (P,) flat image index
    counts = torch.bincount(group, minlength=bsz * n_img)  # (B·N,) tokens per image
    if block is None:
        per_image = pairs.shape[0] / max(int((counts > 0).sum()), 1)
        block = int(min(128, max(16, 2 ** math.ceil(math.log2(max(per_image, 1))))))
    offsets = counts.cumsum(0) - counts  # first pair of each image
    n_blocks = (counts + block - 1) // block  # (B·N,)
    image = torch.repeat_interleave(torch.arange(bsz * n_img, device=mask.device), n_blocks)
    first_block = n_blocks.cumsum(0) - n_blocks
    j = torch.arange(image.shape[0], device=mask.device) - first_block[image]  # block within image
    local = j[:, None] * block + torch.arange(block, device=mask.device)  # (NB, S)
    valid = local < counts[image][:, None]
    pair = (offsets[image][:, None] + local).clamp(max=max(pairs.shape[0] - 1, 0))
    token = pairs[pair, 0] * seq + pairs[pair, 2]  # (NB, S)
    count_per_token = mask.sum(-1).flatten()  # (B·T,)
    return token, valid, image, count_per_token


def fast_masked_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor, *, block: int | None = None
) -> Tensor:
    """Same function as :func:`dense_masked_attention`, computed per image over blocks of tokens.

    q [B, T, H, d]; k, v [B, N, L, H, d]; mask [B, T, N] bool → [B, T, H, d].
    """
    bsz, seq, heads, dh = q.shape
    if not bool(mask.any()):
        # zeros that keep q, k, v in the graph: DDP expects a gradient for every parameter
        return q * 0 + (k.sum() + v.sum()) * 0
    out = q.new_zeros(bsz * seq, heads, dh)
    token, valid, image, count_per_token = _pair_blocks(mask, block)
    n_blk, size = token.shape
    # index_select rather than advanced indexing: its backward is an index_add, not a slower
    # accumulating index_put
    q_blk = q.reshape(bsz * seq, heads * dh).index_select(0, token.flatten())
    q_blk = q_blk.view(n_blk, size, heads, dh).transpose(1, 2)  # (NB, H, S, d)
    k_blk = k.flatten(0, 1).index_select(0, image).transpose(1, 2)  # (NB, H, L, d)
    v_blk = v.flatten(0, 1).index_select(0, image).transpose(1, 2)
    keep = valid.flatten().nonzero().squeeze(1)  # (P,) block slots holding a real pair
    idx = token.flatten().index_select(0, keep)  # (P,) token of each (token, image) pair
    if int(count_per_token.max()) <= 1:
        # every token sees at most one image: plain attention per block, no merging needed
        o = F.scaled_dot_product_attention(q_blk, k_blk, v_blk)  # (NB, H, S, d)
        o = o.transpose(1, 2).reshape(n_blk * size, heads, dh).index_select(0, keep)
        return out.index_add(0, idx, o).view(bsz, seq, heads, dh)
    # some token sees several images: merge per-image results by their log-sum-exps, in ≥ fp32
    acc = torch.promote_types(q.dtype, torch.float32)
    scores = (q_blk @ k_blk.transpose(-1, -2)).to(acc) / math.sqrt(dh)  # (NB, H, S, L)
    lse = scores.logsumexp(-1)  # (NB, H, S)
    o = (scores - lse[..., None]).exp().to(v_blk.dtype) @ v_blk  # (NB, H, S, d)
    o = o.transpose(1, 2).reshape(n_blk * size, heads, dh).index_select(0, keep)
    lse = lse.transpose(1, 2).reshape(n_blk * size, heads).index_select(0, keep)  # (P, H)
    # the max is only a stabiliser: the merged result does not depend on it, so no gradient
    top = lse.new_full((bsz * seq, heads), torch.finfo(lse.dtype).min)
    top = top.scatter_reduce(0, idx[:, None].expand_as(lse), lse.detach(), "amax")
    tot = lse.new_zeros(bsz * seq, heads).index_add(0, idx, (lse - top[idx]).exp())
    weight = (lse - top[idx] - tot[idx].log()).exp()  # (P, H): share of each image in the union
    merged = out.to(acc).index_add(0, idx, weight[..., None] * o.to(acc))
    return merged.to(q.dtype).view(bsz, seq, heads, dh)


class MaskedCrossAttention(nn.Module):
    """Text tokens (queries) attend to the visual tokens of the images the mask lets them see."""

    def __init__(
        self,
        *,
        dim: int,
        dim_visual: int,
        heads: int = 8,
        dim_head: int = 64,
        impl: XattnImpl = "fast",
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads, self.impl = heads, impl
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim_visual, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: Tensor, media: Tensor, mask: Tensor) -> Tensor:
        """x [B, T, D], media [B, N, L, Dv], mask [B, T, N] bool → [B, T, D]; rows with no image 0."""
        q = rearrange(self.to_q(self.norm(x)), "b t (h d) -> b t h d", h=self.heads)
        k, v = rearrange(self.to_kv(media), "b n l (kv h d) -> kv b n l h d", kv=2, h=self.heads)
        kernel = fast_masked_attention if self.impl == "fast" else dense_masked_attention
        out = self.to_out(kernel(q, k, v, mask).flatten(-2))  # (B, T, D)
        return out * mask.any(-1, keepdim=True).to(out.dtype)  # explicit: no image → exactly 0


class FeedForward(nn.Sequential):
    """Pre-norm MLP of the xattn-dense block (lucid flamingo_pytorch.py L20-27)."""

    def __init__(self, *, dim: int, mult: int = 4) -> None:
        super().__init__(
            nn.LayerNorm(dim),
            nn.Linear(dim, dim * mult, bias=False),
            nn.GELU(),
            nn.Linear(dim * mult, dim, bias=False),
        )


class GatedCrossAttentionBlock(nn.Module):
    """Flamingo's GATED XATTN-DENSE (paper Fig. 4): tanh-gated cross-attention, then gated FFW.

    Both gates start at 0, so an untrained block is the identity and the wrapped LM is unchanged.
    """

    def __init__(
        self,
        *,
        dim: int,
        dim_visual: int,
        heads: int = 8,
        dim_head: int = 64,
        ff_mult: int = 4,
        impl: XattnImpl = "fast",
    ) -> None:
        super().__init__()
        self.attn = MaskedCrossAttention(
            dim=dim, dim_visual=dim_visual, heads=heads, dim_head=dim_head, impl=impl
        )
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ff = FeedForward(dim=dim, mult=ff_mult)
        self.ff_gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, media: Tensor, mask: Tensor) -> Tensor:
        """x [B, T, D], media [B, N, L, Dv], mask [B, T, N] bool → [B, T, D]."""
        # cast the gates so a bf16 LM's residual stream stays bf16
        x = x + self.attn(x, media, mask) * self.attn_gate.tanh().to(x.dtype)
        return x + self.ff(x) * self.ff_gate.tanh().to(x.dtype)
