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
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

__all__ = [
    "FeedForward",
    "GatedCrossAttentionBlock",
    "MaskedCrossAttention",
    "PairPlan",
    "dense_masked_attention",
    "fast_masked_attention",
    "plan_pairs",
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


@dataclass(slots=True)
class PairPlan:
    """Where the (token, image) pairs of a [B, T, N] mask sit in blocks of queries.

    It depends on the mask only, so Flamingo builds it once per batch and every layer reuses it (on a
    GPU that saves each layer the host syncs of ``nonzero`` and friends).
    """

    shape: tuple[int, int, int]  # (B, T, N) of the mask
    token: Tensor  # (NB, S) flat token index b·T + t of each block slot (padding: any token)
    image: Tensor  # (NB,) flat image index b·N + n of each block
    keep: Tensor  # (P,) flat block slots that hold a real pair
    idx: Tensor  # (P,) flat token index of each pair
    multi: bool  # some token sees several images: merge by log-sum-exp
    empty: bool  # no token sees any image


def plan_pairs(mask: Tensor, block: int | None = None) -> PairPlan:
    """Group the (token, image) pairs of ``mask`` [B, T, N] by image into blocks of ``block`` queries.

    By default the block size is the mean number of tokens per seen image rounded up to a power of
    two in [16, 128], so that padding stays small.
    """
    bsz, seq, n_img = mask.shape
    pairs = mask.transpose(1, 2).nonzero()  # (P, 3): (b, n, t), sorted by b, then n, then t
    if pairs.shape[0] == 0:
        none = mask.new_zeros(0, dtype=torch.long)
        return PairPlan((bsz, seq, n_img), none[:, None], none, none, none, False, True)
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
    pair = (offsets[image][:, None] + local).clamp(max=pairs.shape[0] - 1)
    token = pairs[pair, 0] * seq + pairs[pair, 2]  # (NB, S)
    keep = valid.flatten().nonzero().squeeze(1)
    multi = int(mask.sum(-1).max()) > 1
    return PairPlan((bsz, seq, n_img), token, image, keep, token.flatten()[keep], multi, False)


def fast_masked_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor,
    *,
    block: int | None = None,
    plan: PairPlan | None = None,
) -> Tensor:
    """Same function as :func:`dense_masked_attention`, computed per image over blocks of tokens.

    q [B, T, H, d]; k, v [B, N, L, H, d]; mask [B, T, N] bool → [B, T, H, d]. ``plan`` is
    ``plan_pairs(mask)``, built here when not given.
    """
    bsz, seq, heads, dh = q.shape
    plan = plan if plan is not None else plan_pairs(mask, block)
    if plan.shape != tuple(mask.shape):
        raise ValueError(f"plan for a {plan.shape} mask used with a {tuple(mask.shape)} mask")
    if plan.empty:
        # zeros that keep q, k, v in the graph: DDP expects a gradient for every parameter
        return q * 0 + (k.sum() + v.sum()) * 0
    out = q.new_zeros(bsz * seq, heads, dh)
    n_blk, size = plan.token.shape
    keep, idx = plan.keep, plan.idx
    # index_select rather than advanced indexing: its backward is an index_add, not a slower
    # accumulating index_put
    q_blk = q.reshape(bsz * seq, heads * dh).index_select(0, plan.token.flatten())
    q_blk = q_blk.view(n_blk, size, heads, dh).transpose(1, 2)  # (NB, H, S, d)
    k_blk = k.flatten(0, 1).index_select(0, plan.image).transpose(1, 2)  # (NB, H, L, d)
    v_blk = v.flatten(0, 1).index_select(0, plan.image).transpose(1, 2)
    if not plan.multi:
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

    def forward(
        self, x: Tensor, media: Tensor, mask: Tensor, plan: PairPlan | None = None
    ) -> Tensor:
        """x [B, T, D], media [B, N, L, Dv], mask [B, T, N] bool → [B, T, D]; rows with no image 0.

        ``plan`` (``plan_pairs(mask)``) lets the fast kernel skip rebuilding it in every layer.
        """
        q = rearrange(self.to_q(self.norm(x)), "b t (h d) -> b t h d", h=self.heads)
        k, v = rearrange(self.to_kv(media), "b n l (kv h d) -> kv b n l h d", kv=2, h=self.heads)
        if self.impl == "fast":
            attn = fast_masked_attention(q, k, v, mask, plan=plan)
        else:
            attn = dense_masked_attention(q, k, v, mask)
        out = self.to_out(attn.flatten(-2))  # (B, T, D)
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

    def forward(
        self, x: Tensor, media: Tensor, mask: Tensor, plan: PairPlan | None = None
    ) -> Tensor:
        """x [B, T, D], media [B, N, L, Dv], mask [B, T, N] bool → [B, T, D]."""
        # cast the gates so a bf16 LM's residual stream stays bf16
        x = x + self.attn(x, media, mask, plan) * self.attn_gate.tanh().to(x.dtype)
        return x + self.ff(x) * self.ff_gate.tanh().to(x.dtype)
