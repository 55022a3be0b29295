"""Masked cross-attention: the fast per-image kernel equals the dense reference; rows that see no image
are exactly 0 and finite in fp32 and bf16; the gated block starts as the identity."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from model.masks import attachment_mask
from model.xattn import (
    GatedCrossAttentionBlock,
    MaskedCrossAttention,
    dense_masked_attention,
    fast_masked_attention,
)


def qkv(b=2, t=40, n=4, lat=6, h=2, d=8, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, t, h, d, generator=g, dtype=dtype).requires_grad_()
    k = torch.randn(b, n, lat, h, d, generator=g, dtype=dtype).requires_grad_()
    v = torch.randn(b, n, lat, h, d, generator=g, dtype=dtype).requires_grad_()
    return q, k, v


def chunk_mask(b: int, t: int, n: int, seed: int, per_image: bool) -> torch.Tensor:
    """A realistic mask from attachment_mask over random chunk layouts (ids: 5 text, 8 img, 9 eoc)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((b, t), 5)
    for row in range(b):
        pos = (
            torch.randperm(t - 2, generator=g)[: n + 1].sort().values + 1
        )  # n+1 images, 1 beyond N
        ids[row, pos] = 8
        ids[row, pos - 1] = 9
    pre = torch.rand(b, n, generator=g) < 0.5
    if not per_image:
        pre = pre[:, :1].expand(b, n)
    valid = torch.rand(b, n, generator=g) < 0.85
    return attachment_mask(ids, pre, valid, 8, 9)


def assert_kernels_agree(mask, q, k, v, atol=1e-5, block=None):
    dense = dense_masked_attention(q, k, v, mask)
    fast = fast_masked_attention(q, k, v, mask, block=block)
    assert torch.allclose(fast, dense, atol=atol, rtol=0), (fast - dense).abs().max()
    g_out = torch.randn_like(dense)
    gd = torch.autograd.grad(dense, (q, k, v), g_out)
    gf = torch.autograd.grad(fast, (q, k, v), g_out)
    for a, b in zip(gd, gf):
        assert torch.allclose(a, b, atol=atol, rtol=0), (a - b).abs().max()


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_fast_matches_dense_on_attachment_masks(per_image, seed):
    mask = chunk_mask(2, 40, 4, seed, per_image)
    if per_image and seed == 0:
        assert mask.sum(-1).max() >= 1
    assert_kernels_agree(mask, *qkv(seed=seed))


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(1, 50),
    st.integers(1, 6),
    st.floats(0.0, 1.0),
    st.sampled_from([None, 1, 4, 16]),
    st.integers(0, 2**16),
)
def test_fast_matches_dense_on_random_masks(b, t, n, density, block, seed):
    # arbitrary masks: tokens seeing 0, 1 or many images, in any pattern
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(b, t, n, generator=g) < density
    assert_kernels_agree(mask, *qkv(b, t, n, seed=seed), block=block)


def test_multi_image_tokens_use_a_joint_softmax():
    # one token sees both images: its output is attention over the union of their latents
    q, k, v = qkv(1, 1, 2, 3, 1, 4)
    mask = torch.ones(1, 1, 2, dtype=torch.bool)
    scores = (q[0, 0, 0] @ k[0].reshape(6, 4).T) / 2.0  # d = 4
    want = scores.softmax(-1) @ v[0].reshape(6, 4)
    assert torch.allclose(fast_masked_attention(q, k, v, mask)[0, 0, 0], want, atol=1e-6)


@pytest.mark.parametrize("kernel", [fast_masked_attention, dense_masked_attention])
def test_rows_that_see_nothing_are_exactly_zero_and_gradients_finite(kernel):
    q, k, v = qkv()
    mask = torch.zeros(2, 40, 4, dtype=torch.bool)
    mask[0, 10:20, 1] = True
    out = kernel(q, k, v, mask)
    assert torch.all(out[0, :10] == 0) and torch.all(out[1] == 0)
    assert out[0, 10:20].abs().sum() > 0
    out.sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v))
    assert torch.all(q.grad[1] == 0)


@pytest.mark.parametrize("impl", ["fast", "dense"])
def test_bf16_masked_attention_is_finite_and_close(impl):
    q, k, v = qkv(dtype=torch.bfloat16)
    mask = chunk_mask(2, 40, 4, 1, per_image=True)
    mask[:, :5] = False  # fully masked rows
    kernel = fast_masked_attention if impl == "fast" else dense_masked_attention
    out = kernel(q, k, v, mask)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    ref = dense_masked_attention(q.float(), k.float(), v.float(), mask)
    assert torch.allclose(out.float(), ref, atol=3e-2)
    out.float().sum().backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()


def test_module_outputs_zero_where_no_image_and_impls_agree():
    torch.manual_seed(0)
    fast = MaskedCrossAttention(dim=16, dim_visual=12, heads=2, dim_head=8, impl="fast")
    dense = MaskedCrossAttention(dim=16, dim_visual=12, heads=2, dim_head=8, impl="dense")
    dense.load_state_dict(fast.state_dict())
    x, media = torch.randn(2, 30, 16), torch.randn(2, 3, 5, 12)
    mask = chunk_mask(2, 30, 3, 7, per_image=True)
    a, b = fast(x, media, mask), dense(x, media, mask)
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.all(a[~mask.any(-1)] == 0)


def test_gated_block_is_the_identity_at_init_and_gates_open():
    torch.manual_seed(0)
    block = GatedCrossAttentionBlock(dim=16, dim_visual=12, heads=2, dim_head=8)
    x, media = torch.randn(2, 30, 16), torch.randn(2, 3, 5, 12)
    mask = chunk_mask(2, 30, 3, 2, per_image=False)
    y = block(x, media, mask)
    assert torch.equal(y, x)
    y.sum().backward()  # gates get gradient even at 0 (d tanh / d g = 1), the rest none yet
    assert block.attn_gate.grad.abs() > 0 and block.ff_gate.grad.abs() > 0
    with torch.no_grad():
        block.attn_gate.fill_(1.0)
    y = block(x, media, mask)
    seen = mask.any(-1)
    assert not torch.equal(y[seen], x[seen])
    # the feed-forward is off (gate 0): unseen rows are unchanged
    assert torch.equal(y[~seen], x[~seen])
    # bf16 residual stream stays bf16
    assert block.to(torch.bfloat16)(x.bfloat16(), media.bfloat16(), mask).dtype == torch.bfloat16
