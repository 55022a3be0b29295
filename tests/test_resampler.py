"""Perceiver Resampler: shapes, per-image independence, the media-slot embedding and its bound."""

from __future__ import annotations

import pytest
import torch

from model.resampler import PerceiverAttention, PerceiverResampler


def make(**kw) -> PerceiverResampler:
    torch.manual_seed(0)
    args = dict(dim=16, depth=2, heads=2, dim_head=8, num_latents=5, max_images=4)
    return PerceiverResampler(**{**args, **kw})


def test_output_shape_is_fixed_whatever_the_number_of_patches():
    r = make()
    for patches in (1, 7, 50):
        assert r(torch.randn(3, 4, patches, 16)).shape == (3, 4, 5, 16)
    assert r(torch.randn(2, 1, 9, 16)).shape == (2, 1, 5, 16)


def test_each_image_is_resampled_independently_with_its_slot_embedding():
    r = make()
    x = torch.randn(1, 3, 9, 16)
    base = r(x)
    y = x.clone()
    y[0, 1] += 1.0
    out = r(y)
    assert torch.equal(out[0, [0, 2]], base[0, [0, 2]]) and not torch.equal(out[0, 1], base[0, 1])
    # the slot embedding makes the same image give different tokens in different slots
    same = x[:, :1].expand(1, 3, 9, 16)
    tokens = r(same)[0]
    assert not torch.allclose(tokens[0], tokens[1])
    # and without it (zeroed), the same image gives the same tokens in every slot
    with torch.no_grad():
        r.media_pos.zero_()
    tokens = r(same)[0]
    assert torch.allclose(tokens[0], tokens[1], atol=1e-6)


def test_keys_include_the_latents():
    # Flamingo Fig. 5: kv = concat(media, latents), so latents matter even for one patch of zeros
    torch.manual_seed(0)
    attn = PerceiverAttention(dim=8, heads=2, dim_head=4)
    media = torch.zeros(1, 1, 1, 8)
    lat_a, lat_b = torch.randn(1, 1, 3, 8), torch.randn(1, 1, 3, 8)
    assert not torch.allclose(attn(media, lat_a), attn(media, lat_b))


def test_too_many_images_is_a_clear_error_and_gradients_flow():
    r = make()
    with pytest.raises(ValueError, match="built for 4"):
        r(torch.randn(1, 5, 3, 16))
    x = torch.randn(2, 2, 6, 16, requires_grad=True)
    r(x).square().mean().backward()
    assert torch.isfinite(x.grad).all() and r.latents.grad.abs().sum() > 0
    assert all(p.grad is not None for p in r.parameters() if p is not r.media_pos) and (
        r.media_pos.grad[:2].abs().sum() > 0 and torch.all(r.media_pos.grad[2:] == 0)
    )
