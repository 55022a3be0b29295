"""The model's contract with its callers (issue 13 §5): a sample's output never depends on its
batch-mates, masked images never leak (not even NaN pixels), and bad calls get clear errors.

Both attention kernels are checked against an independent per-token reference written here: for each
(batch, token) it loops over the images the mask lets that token see, in float64, and does one softmax
per head over their concatenated latents.
"""

from __future__ import annotations

import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings
from test_flamingo import IMG_SIZE, PROMPT, V0, build, encode, images, set_gates, tiny_lm

from model.masks import attachment_mask
from model.xattn import (
    GatedCrossAttentionBlock,
    MaskedCrossAttention,
    dense_masked_attention,
    fast_masked_attention,
)

KERNELS = {"dense": dense_masked_attention, "fast": fast_masked_attention}
IMPLS = ["fast", "dense"]

# --- an independent reference for the masked cross-attention -----------------------------------


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor):
    """q [B, T, H, d], k/v [B, N, L, H, d], mask [B, T, N] → [B, T, H, d] in float64, token by token.

    A token attends, per head, to the concatenated latents of exactly the images its mask row allows;
    a token that sees none gets zeros (not connected to q, k or v)."""
    q, k, v = q.double(), k.double(), v.double()
    bsz, seq, heads, dh = q.shape
    rows = []
    for b in range(bsz):
        for t in range(seq):
            seen = [n for n in range(mask.shape[2]) if bool(mask[b, t, n])]
            if not seen:
                rows.append(torch.zeros(heads, dh, dtype=torch.float64))
                continue
            keys = torch.cat([k[b, n] for n in seen])  # (S, H, d): S = len(seen) · L
            values = torch.cat([v[b, n] for n in seen])
            per_head = []
            for h in range(heads):
                logits = keys[:, h] @ q[b, t, h] / math.sqrt(dh)  # (S,)
                weights = torch.exp(logits - logits.max())
                per_head.append((weights / weights.sum()) @ values[:, h])
            rows.append(torch.stack(per_head))
    return torch.stack(rows).view(bsz, seq, heads, dh)


def grads(out: torch.Tensor, inputs: tuple[torch.Tensor, ...], g_out: torch.Tensor):
    """d(out · g_out)/d inputs, with zeros for inputs the output does not depend on."""
    if not out.requires_grad:
        return [torch.zeros_like(x) for x in inputs]
    got = torch.autograd.grad(out, inputs, g_out, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, got)]


def qkv64(b: int, t: int, n: int, lat: int = 3, h: int = 2, d: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(b, t, h, d), (b, n, lat, h, d), (b, n, lat, h, d)]
    return tuple(torch.randn(s, generator=g, dtype=torch.float64).requires_grad_() for s in shapes)


def assert_kernels_match_reference(mask: torch.Tensor, q, k, v, block: int | None = None) -> None:
    want = reference_attention(q, k, v, mask)
    g_out = torch.randn(want.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    want_grads = grads(want, (q, k, v), g_out)
    for name, kernel in KERNELS.items():
        got = kernel(q, k, v, mask, block=block) if name == "fast" else kernel(q, k, v, mask)
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0, msg=f"{name} forward")
        for x, a, b in zip("qkv", grads(got, (q, k, v), g_out), want_grads):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=0, msg=f"{name} d/d{x}")


TEXT, BOS, EOC, IMG = 5, 1, 9, 8


def window_mask(seed: int, per_image: bool, b: int = 2, n: int = 4) -> torch.Tensor:
    """``attachment_mask`` of random interleaved windows: text chunks of random length, ``<EOC>``
    right before each ``<image>``, one ``<image>`` more than slots, some slots invalid; ``preceding``
    drawn once per document or once per image (then chunk 1 is made to see images 0 and 1)."""
    g = torch.Generator().manual_seed(seed)

    def words() -> list[int]:
        return [TEXT] * int(torch.randint(1, 7, (1,), generator=g))

    rows = []
    for _ in range(b):
        ids = [BOS, *words()]
        for _ in range(n + 1):
            ids += [EOC, IMG, *words()]
        rows.append(ids + [EOC])
    width = max(map(len, rows))
    input_ids = torch.tensor([r + [TEXT] * (width - len(r)) for r in rows])
    valid = torch.rand(b, n, generator=g) < 0.8
    if per_image:
        pre = torch.rand(b, n, generator=g) < 0.5
        pre[:, 0], pre[:, 1], valid[:, :2] = False, True, True
    else:
        pre = (torch.rand(b, 1, generator=g) < 0.5).expand(b, n)
    return attachment_mask(input_ids, pre, valid, IMG, EOC)


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_both_kernels_equal_the_reference_on_attachment_masks(per_image, seed):
    mask = window_mask(seed, per_image)
    seen = mask.sum(-1)
    assert seen.max() == (2 if per_image else 1) and (seen == 0).any()
    assert_kernels_match_reference(mask, *qkv64(*mask.shape, seed=seed))


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 2),
    st.integers(1, 20),
    st.integers(1, 4),
    st.floats(0.0, 1.0),
    st.sampled_from([None, 1, 3]),
    st.integers(0, 2**16),
)
@pytest.mark.slow
def test_both_kernels_equal_the_reference_on_random_masks(b, t, n, density, block, seed):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(b, t, n, generator=g) < density
    mask[:, :: max(t // 3, 1)] = False  # always some rows that see nothing
    assert_kernels_match_reference(mask, *qkv64(b, t, n, seed=seed), block=block)


# --- masked values never leak -------------------------------------------------------------------


@pytest.mark.parametrize("kernel", KERNELS.values(), ids=KERNELS.keys())
@pytest.mark.parametrize("seen_by_some", [False, True])
def test_nan_in_an_image_never_reaches_tokens_that_do_not_see_it(kernel, seen_by_some):
    g = torch.Generator().manual_seed(4)
    mask = torch.rand(2, 30, 4, generator=g) < 0.3
    mask[:, :, 2] = False
    if seen_by_some:  # tokens 10-15 see image 2 only: the others' gradients must stay clean
        mask[0, 10:16] = False
        mask[0, 10:16, 2] = True
    q, k, v = (x.detach().float() for x in qkv64(2, 30, 4, lat=5, seed=4))
    clean = [x.clone().requires_grad_() for x in (q, k, v)]
    broken = [x.clone() for x in (q, k, v)]
    broken[1][0, 2], broken[2][0, 2] = math.nan, math.nan  # image 2 of sample 0: NaN latents
    broken = [x.requires_grad_() for x in broken]
    want, got = kernel(*clean, mask), kernel(*broken, mask)
    blind = ~mask[..., 2]  # (B, T): tokens that do not see image 2 (of their own sample)
    assert torch.isfinite(got[blind]).all()
    assert torch.equal(got[blind], want[blind])
    assert not torch.isfinite(got[~blind]).any()
    g_out = torch.where(blind[..., None, None], torch.randn_like(want), 0)
    want_g, got_g = grads(want, clean, g_out), grads(got, broken, g_out)
    if seen_by_some and kernel is dense_masked_attention:
        # the reference kernel keeps the others' outputs clean, not their gradients (documented)
        return
    for x, a, b in zip("qkv", got_g, want_g):
        # compared: the blind tokens' q, and every image's k, v but the broken one's
        keep = (
            blind[..., None, None].expand_as(a).clone() if x == "q" else torch.ones_like(a).bool()
        )
        if x != "q":
            keep[0, 2] = False
        assert torch.isfinite(a[keep]).all(), x
        torch.testing.assert_close(a[keep], b[keep], atol=1e-6, rtol=0, msg=f"d/d{x}")


@pytest.mark.slow
@pytest.mark.parametrize("impl", IMPLS)
def test_a_broken_image_nobody_sees_changes_nothing(impl):
    # three valid slots, a prompt with two <image>: slot 2 is seen by nobody, and its pixels are NaN
    model, tok = build("gpt2", xattn_impl=impl)
    set_gates(model)
    model.train()
    ids = encode(tok, PROMPT)
    good = images(2)
    broken = torch.cat([good, torch.full_like(good[:, :1], math.nan)], dim=1)
    outs = []
    for px in (good, broken):
        model.zero_grad()
        out = model(ids, pixel_values=px, labels=ids)
        out.loss.backward()
        outs.append((out.logits.detach(), [p.grad.clone() for p in model.trainable_parameters()]))
    (want, want_grads), (got, got_grads) = outs
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    for a, b in zip(got_grads, want_grads):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("impl", IMPLS)
def test_a_gated_block_keeps_a_broken_image_to_the_tokens_that_see_it(impl):
    # within the LM, a NaN reaches earlier tokens anyway (its own causal attention weighs future
    # values by 0); the block itself must not spread it
    torch.manual_seed(0)
    block = GatedCrossAttentionBlock(dim=16, dim_visual=12, heads=2, dim_head=8, impl=impl)
    with torch.no_grad():
        block.attn_gate.fill_(0.7)
        block.ff_gate.fill_(0.7)
    x, media = torch.randn(2, 20, 16), torch.randn(2, 3, 5, 12)
    mask = torch.zeros(2, 20, 3, dtype=torch.bool)
    mask[:, 5:12, 0], mask[:, 12:, 1], mask[:, 15:, 2] = True, True, True
    broken = media.clone()
    broken[0, 2] = math.nan
    want, got = block(x, media, mask), block(x, broken, mask)
    sees = torch.zeros(2, 20, dtype=torch.bool)
    sees[0, 15:] = True
    assert torch.equal(got[~sees], want[~sees]) and not torch.isfinite(got[sees]).any()


def test_module_output_ignores_nan_media_nobody_sees():
    torch.manual_seed(0)
    for impl in IMPLS:
        attn = MaskedCrossAttention(dim=16, dim_visual=12, heads=2, dim_head=8, impl=impl)
        x, media = torch.randn(2, 20, 16), torch.randn(2, 3, 5, 12)
        mask = torch.zeros(2, 20, 3, dtype=torch.bool)
        mask[:, 5:12, 0] = True
        broken = media.clone()
        broken[:, 1] = math.nan
        want, got = attn(x, media, mask), attn(x, broken, mask)
        assert torch.equal(got, want), impl
        got.sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in attn.parameters()), impl


# --- a sample never depends on its batch-mates --------------------------------------------------

TEXT_ONLY = "<s> the cat sat on the mat and a dog is red"
WITH_IMAGES = "<s> a photo of <E> <I> a red car <E> <I> a"  # as long as TEXT_ONLY


@pytest.mark.slow
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("pad", [False, True])
def test_a_text_only_sample_gives_the_same_logits_alone_and_beside_images(impl, pad):
    model, tok = build("gpt2", xattn_impl=impl)
    set_gates(model)
    text = encode(tok, TEXT_ONLY if not pad else "<s> the cat sat")
    other = encode(tok, WITH_IMAGES if not pad else PROMPT)
    n = text.shape[1]
    row = torch.cat([text, torch.full((1, other.shape[1] - n), tok.pad_token_id)], dim=1)
    ids = torch.cat([row, other])
    attn = (torch.arange(ids.shape[1]) < torch.tensor([[n], [other.shape[1]]])).long()
    px = torch.cat([images(2, seed=7), images(2)])
    valid = torch.tensor([[False, False], [True, True]])
    with torch.no_grad():
        alone = model(text).logits[0]
        both = model(ids, pixel_values=px, image_valid=valid, attention_mask=attn).logits
        other_alone = model(other, pixel_values=images(2)).logits[0]
    torch.testing.assert_close(both[0, :n], alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(both[1], other_alone, atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_zero_gates_without_images_still_give_the_bare_lm(kind):
    # the blocks now run without images too; at gate 0 they must add exactly nothing
    bare = tiny_lm(kind)
    model, tok = build(kind)
    ids = encode(tok, "the cat sat on the mat and a dog")
    with torch.no_grad():
        assert torch.equal(model(ids).logits[..., :V0], bare(ids).logits)
    kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(ids, **kw), bare.generate(ids, **kw))


def test_the_gated_ffw_runs_on_tokens_without_images():
    torch.manual_seed(0)
    block = GatedCrossAttentionBlock(dim=16, dim_visual=12, heads=2, dim_head=8)
    x = torch.randn(2, 10, 16)
    assert torch.equal(block(x), x)  # gates at 0: the identity, with or without images
    with torch.no_grad():
        block.ff_gate.fill_(0.5)
        block.attn_gate.fill_(0.5)
    no_image = torch.zeros(2, 10, 3, dtype=torch.bool)
    without = block(x)
    assert not torch.equal(without, x)
    assert torch.equal(without, block(x, torch.randn(2, 3, 4, 12), no_image))
    assert torch.equal(without, block(x, torch.randn(2, 0, 4, 12), no_image[..., :0]))


@pytest.mark.slow
@pytest.mark.parametrize("impl", IMPLS)
def test_text_only_generation_alone_equals_beside_an_image_prompt(impl):
    model, tok = build("gpt2", xattn_impl=impl)
    set_gates(model, 2.0)
    text, other = encode(tok, TEXT_ONLY), encode(tok, WITH_IMAGES)
    banned = [model.config.image_token_id, tok.eos_token_id]
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id,
              suppress_tokens=banned)  # fmt: skip
    cached = model.generate(text, use_cache=True, **kw)
    assert torch.equal(cached, model.generate(text, use_cache=False, **kw))
    seq = text  # the manual loop: full forwards without images, argmax
    for _ in range(6):
        with torch.no_grad():
            logits = model(seq).logits[0, -1]
        logits[banned] = -math.inf
        seq = torch.cat([seq, logits.argmax().view(1, 1)], dim=1)
    assert torch.equal(cached, seq)
    px = torch.cat([images(2, seed=7), images(2)])
    valid = torch.tensor([[False, False], [True, True]])
    both = model.generate(torch.cat([text, other]), px, image_valid=valid, **kw)
    assert torch.equal(both[0], cached[0])
    assert torch.equal(both[1], model.generate(other, images(2), **kw)[0])


def test_cached_forward_without_images_equals_the_full_forward():
    model, tok = build("llama")
    set_gates(model)
    ids = encode(tok, TEXT_ONLY)
    with torch.no_grad():
        full = model(ids).logits[0, -1]
        first = model(ids[:, :-1], use_cache=True)
        last = model(ids[:, -1:], past_key_values=first.past_key_values, use_cache=True)
    torch.testing.assert_close(last.logits[0, -1], full, atol=1e-5, rtol=0)


# --- zero images ----------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_zero_images_work_and_equal_no_images(impl):
    model, tok = build("gpt2", xattn_impl=impl)
    set_gates(model)
    ids = encode(tok, PROMPT)
    none = torch.zeros(1, 0, 3, IMG_SIZE, IMG_SIZE)
    with torch.no_grad():
        media = model.encode_images(none)
        got = model(ids, pixel_values=none).logits
        want = model(ids).logits
    assert media.shape == (1, 0, model.config.num_latents, 24)
    assert torch.equal(got, want)
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert torch.equal(model.generate(ids, none, **kw), model.generate(ids, **kw))
    model.train()
    out = model(ids, pixel_values=none, labels=ids)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.trainable_parameters())


# --- bad calls get clear errors -----------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_batch_size_mismatch_is_a_clear_error(impl):
    model, tok = build("gpt2", xattn_impl=impl)
    ids = encode(tok, PROMPT).repeat(2, 1)
    shapes = rf"\(2, {ids.shape[1]}\).*\(1, 2, 3, {IMG_SIZE}, {IMG_SIZE}\)"
    with pytest.raises(ValueError, match=shapes):
        model(ids, pixel_values=images(2))
    with pytest.raises(ValueError, match=shapes):
        model.generate(ids, images(2), max_new_tokens=2)
    px = images(2).repeat(2, 1, 1, 1, 1)
    with pytest.raises(ValueError, match=r"image_valid.*\(1, 2\)"):
        model(ids, pixel_values=px, image_valid=torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"preceding.*\(2, 3\)"):
        model(ids, pixel_values=px, preceding=torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"media_mask.*\(1, \d+, 2\)"):
        model(ids, pixel_values=px, media_mask=torch.ones(1, ids.shape[1], 2, dtype=torch.bool))


@pytest.mark.parametrize("impl", IMPLS)
def test_shape_mismatch_in_the_cross_attention_is_a_clear_error(impl):
    attn = MaskedCrossAttention(dim=16, dim_visual=12, heads=2, dim_head=8, impl=impl)
    block = GatedCrossAttentionBlock(dim=16, dim_visual=12, heads=2, dim_head=8, impl=impl)
    x, media, mask = torch.randn(2, 7, 16), torch.randn(2, 3, 5, 12), torch.ones(2, 7, 3).bool()
    bad = {
        "media batch": (x, media[:1], mask),
        "mask batch": (x, media, mask[:1]),
        "mask tokens": (x, media, mask[:, :6]),
        "mask images": (x, media, mask[..., :2]),
    }
    for case, args in bad.items():
        for module in (attn, block):
            with pytest.raises(ValueError, match=r"x \(2, 7, 16\).*media.*mask"):
                module(*args)
                pytest.fail(f"{case}: no error from {type(module).__name__}")
    q, k, v = qkv64(2, 7, 3)
    kernel = KERNELS[impl]
    for args in ((q, k[:1], v[:1], mask), (q, k, v, mask[:1]), (q, k, v[:, :2], mask)):
        with pytest.raises(ValueError, match=r"q \(2, 7, 2, 4\)"):
            kernel(*args)


@pytest.mark.parametrize(
    "kind,field", [("gpt2", "n_positions"), ("opt", "max_position_embeddings")]
)
@pytest.mark.slow
def test_a_sequence_past_the_lm_positions_is_a_clear_error(kind, field):
    model, tok = build(kind)
    limit = 128  # the tiny LMs' position limit
    word = int(encode(tok, "the")[0, 0])
    with torch.no_grad():
        assert model(torch.full((1, limit), word)).logits.shape[1] == limit
    with pytest.raises(ValueError, match=rf"129 tokens.*{limit} positions.*config\.{field}"):
        model(torch.full((1, limit + 1), word))
    with pytest.raises(ValueError, match=rf"{limit} positions"):
        model(torch.full((1, limit + 1), word), pixel_values=images(2))
    kw = dict(do_sample=False, pad_token_id=tok.pad_token_id, suppress_tokens=[tok.eos_token_id])
    prompt = torch.full((1, limit - 3), word)
    for use_cache in (True, False):  # the prompt fits, the generated tokens would not
        with pytest.raises(ValueError, match=rf"{limit} positions"):
            model.generate(prompt, max_new_tokens=10, use_cache=use_cache, **kw)
    assert model.generate(prompt, max_new_tokens=3, **kw).shape[1] == limit


def test_four_dimensional_pixel_values_are_a_clear_error():
    model, tok = build("gpt2")
    ids = encode(tok, PROMPT)
    flat = images(1)[:, 0]  # [B, C, H, W]: the N axis is missing
    expected = r"\[B, N, C, H, W\].*\(1, 3, 32, 32\)"
    with pytest.raises(ValueError, match=expected):
        model(ids, pixel_values=flat)
    with pytest.raises(ValueError, match=expected):
        model.generate(ids, flat, max_new_tokens=2)
    with pytest.raises(ValueError, match=expected):
        model.encode_images(flat)
