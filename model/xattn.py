"""Masked cross-attention from text tokens to visual tokens, and the gated xattn-dense block.

Flamingo (Alayrac et al. 2022, §2.2, Fig. 4) inserts ``GATED XATTN-DENSE`` blocks between the frozen
LM layers: cross-attention to the resampled visual tokens, then a feed-forward, each added to the
residual stream behind ``tanh(gate)`` with the gate initialised at 0, so that at initialisation the
model is exactly the frozen LM.

Which images a token may attend to comes from ``model.masks.attachment_mask`` as a bool [B, T, N].
A token that sees no image gets exactly 0 (DESIGN §4): rows are gated explicitly, never left to a
softmax over an all-masked row (NaN on some SDPA kernels). Masked values never leak: a token's output
depends only on the images its row allows, even when another image holds NaN or inf (a broken
image), because masking is done with ``torch.where`` and never by multiplying with a 0/1 mask (0 × NaN
is NaN). Images that no token sees do not reach the gradients either; the fast kernel also keeps
a seen image out of the other tokens' gradients, the dense reference only out of their outputs.

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
    "check_attention_shapes",
    "check_module_shapes",
    "dense_masked_attention",
    "fast_masked_attention",
    "plan_pairs",
]

XattnImpl = Literal["fast", "dense"]


def check_attention_shapes(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> None:
    """Raise a ValueError unless q [B, T, H, d], k = v [B, N, L, H, d] and mask [B, T, N] agree.

    Without it a batch-1 k would broadcast silently in the dense kernel (and index out of range in
    the fast one)."""
    ok = q.dim() == 4 and k.dim() == 5 and v.shape == k.shape and mask.dim() == 3
    ok = ok and k.shape[0] == q.shape[0] and k.shape[3:] == q.shape[2:]
    ok = ok and tuple(mask.shape) == (q.shape[0], q.shape[1], k.shape[1])
    if not ok:
        raise ValueError(
            f"masked attention expects q [B, T, H, d], k and v [B, N, L, H, d], mask [B, T, N]; got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, mask {tuple(mask.shape)}"
        )


def dense_masked_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """Reference kernel. q [B, T, H, d]; k, v [B, N, L, H, d]; mask [B, T, N] bool → [B, T, H, d].

    The softmax runs jointly over all N·L latents, but the values are summed per image and the
    images a token may not see are dropped with ``torch.where``: ``attn @ v`` over all of them would
    give 0 × NaN = NaN to every token as soon as one image holds NaN.
    """
    check_attention_shapes(q, k, v, mask)
    # images no token sees leave the graph entirely, so they cannot reach the gradients either
    seen = mask.any(1)[:, :, None, None, None]  # (B, N, 1, 1, 1)
    k, v = torch.where(seen, k, 0), torch.where(seen, v, 0)
    scores = torch.einsum("bthd,bnlhd->bhtnl", q, k) / math.sqrt(q.shape[-1])
    # a finite fill keeps all-masked rows finite (uniform); their values are dropped below
    scores = scores.masked_fill(~mask[:, None, :, :, None], torch.finfo(scores.dtype).min)
    attn = scores.flatten(-2).softmax(dim=-1).view_as(scores)  # (B, H, T, N, L)
    per_image = torch.einsum("bhtnl,bnlhd->bthnd", attn, v)  # (B, T, H, N, d)
    return torch.where(mask[:, :, None, :, None], per_image, 0).sum(-2)


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
    real: Tensor  # (NB, S) bool: the slot holds a real pair (padding slots get q = 0)
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
        real = none[:, None].bool()
        return PairPlan((bsz, seq, n_img), none[:, None], none, none, real, none, False, True)
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
    return PairPlan(
        (bsz, seq, n_img), token, image, keep, valid, token.flatten()[keep], multi, False
    )


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
    ``plan_pairs(mask)``, built here when not given. A block reads only its own image, and its
    padding slots get q = 0 through ``torch.where``, so no token's output or gradient depends on
    an image it does not see.
    """
    check_attention_shapes(q, k, v, mask)
    bsz, seq, heads, dh = q.shape
    plan = plan if plan is not None else plan_pairs(mask, block)
    if plan.shape != tuple(mask.shape):
        raise ValueError(f"plan for a {plan.shape} mask used with a {tuple(mask.shape)} mask")
    if plan.empty:
        # zeros that keep q, k, v in the graph (DDP expects a gradient for every parameter); empty
        # slices, not ``x * 0``, so that a NaN anywhere cannot turn the zeros into NaN
        touch = sum(x.reshape(-1)[:0].sum() for x in (q, k, v))
        return torch.zeros_like(q) + touch
    out = q.new_zeros(bsz * seq, heads, dh)
    n_blk, size = plan.token.shape
    keep, idx = plan.keep, plan.idx
    # index_select rather than advanced indexing: its backward is an index_add, not a slower
    # accumulating index_put
    q_blk = q.reshape(bsz * seq, heads * dh).index_select(0, plan.token.flatten())
    # padding slots hold some other token's q: zero it, or a NaN of this block's image would reach
    # that token's gradient through the padding row (where's backward drops it, 0 × NaN would not)
    q_blk = torch.where(plan.real.flatten()[:, None], q_blk, 0)
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


def check_module_shapes(x: Tensor, media: Tensor, mask: Tensor) -> None:
    """Raise a ValueError unless x [B, T, D], media [B, N, L, Dv] and mask [B, T, N] agree."""
    ok = x.dim() == 3 and media.dim() == 4 and mask.dim() == 3
    ok = ok and tuple(mask.shape) == (x.shape[0], x.shape[1], media.shape[1])
    if not ok or media.shape[0] != x.shape[0]:
        raise ValueError(
            f"cross-attention expects x [B, T, D], media [B, N, L, Dv], mask [B, T, N]; got "
            f"x {tuple(x.shape)}, media {tuple(media.shape)}, mask {tuple(mask.shape)}"
        )


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
        check_module_shapes(x, media, mask)
        # an image no token sees is zeroed before the projection: a NaN there would otherwise reach
        # to_kv's weight gradient (dW = dYᵀ·X is 0 × NaN on its rows)
        media = torch.where(mask.any(1)[:, :, None, None], media, 0)
        q = rearrange(self.to_q(self.norm(x)), "b t (h d) -> b t h d", h=self.heads)
        k, v = rearrange(self.to_kv(media), "b n l (kv h d) -> kv b n l h d", kv=2, h=self.heads)
        if self.impl == "fast":
            attn = fast_masked_attention(q, k, v, mask, plan=plan)
        else:
            attn = dense_masked_attention(q, k, v, mask)
        out = self.to_out(attn.flatten(-2))  # (B, T, D)
        return torch.where(mask.any(-1, keepdim=True), out, 0)  # explicit: no image → exactly 0


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
    The block runs on every token, with or without images: a token that sees no image gets 0 from
    the cross-attention but still goes through the gated FFW, so a sample's output never depends on
    whether its batch-mates have images.
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
        self,
        x: Tensor,
        media: Tensor | None = None,
        mask: Tensor | None = None,
        plan: PairPlan | None = None,
    ) -> Tensor:
        """x [B, T, D], media [B, N, L, Dv] or None (no images), mask [B, T, N] bool → [B, T, D]."""
        # cast the gates so a bf16 LM's residual stream stays bf16
        if media is not None:
            if mask is None:
                raise ValueError("media given without its [B, T, N] mask")
            x = x + self.attn(x, media, mask, plan) * self.attn_gate.tanh().to(x.dtype)
        return x + self.ff(x) * self.ff_gate.tanh().to(x.dtype)
