"""Flamingo wrapper on tiny random-init transformers models (offline: configs, no hub).

Covers DESIGN §5: zero gates give the LM's logits (GPT-2, OPT, Llama), layer discovery (also Qwen2,
GPT-NeoX), locality of image influence, finiteness under fully masked rows (fp32, bf16 autocast),
frozen parameters, trainable-parameter formula, cached generation, checkpointing and save/load.
"""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from model.flamingo import (
    EOC_TOKEN,
    IMAGE_TOKEN,
    Flamingo,
    FlamingoConfig,
    FlamingoLayer,
    add_flamingo_tokens,
    build_image_processor,
    find_decoder_layers,
)

WORDS = "the a cat dog sat on mat photo of red blue green house tree car is and in".split()
IMG_SIZE = 32


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over a fixed vocabulary (no files, no hub)."""
    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", bos_token="<s>", eos_token="</s>"
    )


V0 = len(WORDS) + 3
DIM = 32


def tiny_lm(kind: str = "gpt2", vocab: int = V0) -> torch.nn.Module:
    torch.manual_seed(0)
    common = dict(vocab_size=vocab, hidden_size=DIM, num_attention_heads=4, num_hidden_layers=2)
    if kind == "gpt2":
        cfg = GPT2Config(vocab_size=vocab, n_embd=DIM, n_head=4, n_layer=2, n_positions=128,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                         bos_token_id=1, eos_token_id=2)  # fmt: skip
        return GPT2LMHeadModel(cfg).eval()
    if kind == "opt":
        cfg = OPTConfig(ffn_dim=64, max_position_embeddings=128, word_embed_proj_dim=DIM,
                        dropout=0.0, pad_token_id=0, **common)  # fmt: skip
        return OPTForCausalLM(cfg).eval()
    if kind == "llama":
        return LlamaForCausalLM(
            LlamaConfig(intermediate_size=64, num_key_value_heads=2, **common)
        ).eval()
    if kind == "qwen2":
        return Qwen2ForCausalLM(
            Qwen2Config(intermediate_size=64, num_key_value_heads=2, **common)
        ).eval()
    if kind == "neox":
        return GPTNeoXForCausalLM(GPTNeoXConfig(intermediate_size=64, **common)).eval()
    raise ValueError(kind)


def tiny_vision() -> CLIPVisionModel:
    torch.manual_seed(1)
    cfg = CLIPVisionConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=2,
                           num_attention_heads=2, image_size=IMG_SIZE, patch_size=8)  # fmt: skip
    return CLIPVisionModel(cfg).eval()


CFG = FlamingoConfig(num_latents=4, resampler_depth=1, resampler_heads=2, resampler_dim_head=8,
                     xattn_heads=2, xattn_dim_head=8, ff_mult=2, max_images=3)  # fmt: skip


def build(kind: str = "gpt2", **overrides) -> tuple[Flamingo, PreTrainedTokenizerFast]:
    tok = tiny_tokenizer()
    cfg = FlamingoConfig(**{**CFG.__dict__, **overrides})
    model = Flamingo.from_models(tiny_lm(kind), tiny_vision(), tok, cfg).eval()
    return model, tok


def set_gates(model: Flamingo, value: float = 0.7) -> None:
    torch.manual_seed(2)
    with torch.no_grad():
        for layer in model.flamingo_layers:
            layer.xattn.attn_gate.fill_(value)
            layer.xattn.ff_gate.fill_(value)


def encode(tok, text: str) -> torch.Tensor:
    text = text.replace("<I>", IMAGE_TOKEN).replace("<E>", EOC_TOKEN)
    return torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])


PROMPT = "<s> the cat <E> <I> a photo of a dog <E> <I> red house on the mat <E> </s>"


def images(n: int = 2, seed: int = 3) -> torch.Tensor:
    return torch.randn(1, n, 3, IMG_SIZE, IMG_SIZE, generator=torch.Generator().manual_seed(seed))


# --- tokens and embeddings ----------------------------------------------------------------------


def test_add_flamingo_tokens_is_idempotent_and_adds_pad():
    tok = tiny_tokenizer()
    assert tok.pad_token is None
    ids = add_flamingo_tokens(tok)
    assert ids == add_flamingo_tokens(tok) and len(set(ids)) == 2 and min(ids) >= V0
    assert tok.pad_token is not None and len(tok) == V0 + 3
    assert tok.convert_ids_to_tokens(list(ids)) == [IMAGE_TOKEN, EOC_TOKEN]
    assert encode(tok, "a <I> cat <E>").tolist()[0][1:] == [ids[0], WORDS.index("cat") + 3, ids[1]]


@pytest.mark.slow
def test_new_rows_train_and_original_rows_stay_frozen_with_tied_head():
    model, tok = build("gpt2")
    emb, head = model.lm.get_input_embeddings(), model.lm.get_output_embeddings()
    assert head.extra is emb.extra and not emb.base.weight.requires_grad  # GPT-2 ties lm_head
    ids = encode(tok, PROMPT)
    assert model(ids).logits.shape == (1, ids.shape[1], len(tok))
    out = model(ids, pixel_values=images(), labels=ids)
    out.loss.backward()
    assert emb.extra.grad is not None and emb.extra.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, name


def test_new_token_ids_inside_a_padded_embedding_matrix():
    # Qwen-style: more embedding rows than tokens, so the new ids fall inside the frozen matrix
    tok = tiny_tokenizer()
    model = Flamingo.from_models(tiny_lm("llama", vocab=V0 + 8), tiny_vision(), tok, CFG)
    assert max(model.config.new_token_ids) < V0 + 8
    emb = model.lm.get_input_embeddings()
    ids = encode(tok, "a <I> cat <E>")
    with torch.no_grad():
        emb.extra.fill_(3.0)
    assert torch.all(emb(ids)[0, [1, 3]] == 3.0) and not torch.any(emb(ids)[0, [0, 2]] == 3.0)
    assert model(ids).logits.shape[-1] == V0 + 8


# --- layer discovery and zero gates -------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gpt2", "opt", "llama", "qwen2", "neox"])
def test_zero_gates_give_the_bare_lm_logits(kind):
    bare = tiny_lm(kind)
    model, tok = build(kind)
    assert len(model.flamingo_layers) == 2
    assert all(isinstance(m, FlamingoLayer) for m in find_decoder_layers_of_wrapped(model))
    ids = encode(tok, "the cat sat on the mat and a dog")
    with torch.no_grad():
        want = bare(ids).logits
        got = model(ids, pixel_values=images(), media_mask=torch.ones(1, ids.shape[1], 2).bool())
    assert torch.equal(got.logits[..., :V0], want)


def find_decoder_layers_of_wrapped(model: Flamingo) -> list[torch.nn.Module]:
    lists = [m for m in model.lm.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == 2]
    return [layer for lst in lists for layer in lst if isinstance(layer, FlamingoLayer)]


def test_every_nth_layer_and_a_clear_error_when_no_layers():
    tok = tiny_tokenizer()
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=V0, n_embd=DIM, n_head=4, n_layer=4))
    model = Flamingo.from_models(
        lm, tiny_vision(), tok, FlamingoConfig(**{**CFG.__dict__, "cross_attn_every_n_layers": 2})
    )
    assert list(model.gates()) == ["layer1.attn", "layer1.ff", "layer3.attn", "layer3.ff"]
    assert set(model.gates().values()) == {0.0}
    with pytest.raises(ValueError, match="Linear"):
        find_decoder_layers(torch.nn.Linear(3, 3))


@pytest.mark.slow
def test_any_vision_tower_and_hidden_layer_siglip():
    torch.manual_seed(1)
    vcfg = SiglipVisionConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=2,
                              num_attention_heads=2, image_size=IMG_SIZE, patch_size=8)  # fmt: skip
    tok = tiny_tokenizer()
    cfg = FlamingoConfig(**{**CFG.__dict__, "vision_layer": -2})
    model = Flamingo.from_models(tiny_lm("opt"), SiglipVisionModel(vcfg).eval(), tok, cfg).eval()
    set_gates(model)
    ids = encode(tok, PROMPT)
    with torch.no_grad():
        media = model.encode_images(images(), torch.tensor([[True, False]]))
        out = model(ids, pixel_values=images())
    assert media.shape == (1, 2, CFG.num_latents, 24) and torch.isfinite(out.logits).all()
    # OPT ties input and output embeddings: one shared row matrix; tiny Llama does not: two
    llama, _ = build("llama")
    head, emb = llama.lm.get_output_embeddings(), llama.lm.get_input_embeddings()
    assert head.extra is not emb.extra and head.extra.requires_grad
    assert model.lm.get_output_embeddings().extra is model.lm.get_input_embeddings().extra


# --- locality of image influence ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("preceding", [False, True])
def test_an_image_changes_only_the_tokens_that_see_it(preceding):
    model, tok = build("gpt2")
    set_gates(model)
    ids = encode(tok, PROMPT)
    pre = torch.tensor([[preceding, preceding]])
    valid = torch.ones(1, 2, dtype=torch.bool)
    mask = model.media_mask(ids, pre, valid)[0]  # (T, 2)
    base, other = images(), images().clone()
    other[0, 1] += 1.0  # perturb image 1 only
    with torch.no_grad():
        a = model(ids, pixel_values=base, preceding=pre).logits[0]
        b = model(ids, pixel_values=other, preceding=pre).logits[0]
    changed = (a - b).abs().amax(-1) > 0
    # a token's output depends on image 1 iff it or an earlier token sees image 1 (causal LM)
    sees_1 = mask[:, 1].long().cumsum(0) > 0
    assert torch.equal(changed, sees_1) and changed.any() and not changed.all()
    # tokens before the first token that sees any image are unaffected by every image
    first = int(mask.any(-1).nonzero()[0])
    assert first == (0 if preceding else 4)  # preceding: text0 sees image 0
    with torch.no_grad():
        c = model(ids, pixel_values=torch.randn_like(base), preceding=pre).logits[0]
    assert torch.equal(a[:first], c[:first]) and not torch.equal(a[first:], c[first:])


# --- numerics and gradients ---------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["fast", "dense"])
@pytest.mark.parametrize("autocast", [False, True])
def test_finite_forward_and_backward_with_fully_masked_rows(impl, autocast):
    model, tok = build("gpt2", xattn_impl=impl)
    set_gates(model)
    model.train()
    ids = encode(tok, PROMPT)
    valid = torch.tensor([[True, False]])  # image 1 invalid: its chunk's rows are fully masked
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(ids, pixel_values=images(), image_valid=valid, labels=ids)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in model.trainable_parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_no_image_at_all_is_finite():
    model, tok = build("gpt2")
    set_gates(model)
    ids = encode(tok, "the cat sat")
    out = model(ids, pixel_values=images(), image_valid=torch.zeros(1, 2, dtype=torch.bool))
    assert torch.isfinite(out.logits).all()


def test_trainable_parameter_count_matches_the_formula():
    model, tok = build("gpt2")
    c, dv, d = CFG, 24, DIM
    inner_r, inner_x = c.resampler_heads * c.resampler_dim_head, c.xattn_heads * c.xattn_dim_head
    ff = lambda dim: 2 * dim + 2 * dim * dim * c.ff_mult  # noqa: E731 (LayerNorm + 2 matrices)
    perceiver = 4 * dv + dv * inner_r * 3 + inner_r * dv  # 2 LayerNorms, q, kv, out
    resampler = (
        c.num_latents * dv + c.max_images * dv + c.resampler_depth * (perceiver + ff(dv)) + 2 * dv
    )
    block = 2 * d + d * inner_x + dv * inner_x * 2 + inner_x * d + 1 + ff(d) + 1
    rows = 3 * d  # <image>, <|endofchunk|>, <PAD>, tied between input and output
    want = resampler + 2 * block + rows
    assert sum(p.numel() for p in model.trainable_parameters()) == want
    groups = model.param_groups(0.1)
    assert sum(len(g["params"]) for g in groups) == len(model.trainable_parameters())
    decayed = {id(p) for p in groups[0]["params"]}
    assert id(model.resampler.latents) not in decayed
    assert id(model.flamingo_layers[0].xattn.attn.to_q.weight) in decayed


def test_loss_ignores_image_tokens_and_minus_100():
    model, tok = build("gpt2")
    ids = encode(tok, PROMPT)
    labels = ids.clone()
    labels[0, :3] = -100
    with torch.no_grad():
        out = model(ids, pixel_values=images(), labels=labels)
        logits = out.logits[0, :-1]
        target = labels[0, 1:].clone()
        target[target == model.config.image_token_id] = -100
        keep = target != -100
        want = torch.nn.functional.cross_entropy(logits[keep], target[keep])
    assert torch.allclose(out.loss, want)


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for ckpt in (False, True):
        model, tok = build("llama")
        set_gates(model)
        model.train()
        if ckpt:
            model.gradient_checkpointing_enable()
        calls = {"xattn": 0, "layer": 0}

        def counter(key: str, calls: dict = calls):
            return lambda *_: calls.__setitem__(key, calls[key] + 1)

        for layer in model.flamingo_layers:
            layer.xattn.register_forward_pre_hook(counter("xattn"))
            layer.decoder_layer.mlp.register_forward_pre_hook(counter("layer"))
        ids = encode(tok, PROMPT)
        model(ids, pixel_values=images(), labels=ids).loss.backward()
        grads.append([p.grad.clone() for p in model.trainable_parameters()])
        # with checkpointing every block and decoder layer runs again in backward (pre-hooks: the
        # recompute stops early, once it has what backward needs, so post-hooks would not fire;
        # transformers checkpoints `forward`, so the count is taken on a submodule, the MLP)
        assert calls == ({"xattn": 4, "layer": 4} if ckpt else {"xattn": 2, "layer": 2})
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.slow
def test_a_few_steps_open_the_gates_and_lower_the_loss():
    model, tok = build("gpt2")
    model.train()
    ids = encode(tok, PROMPT)
    opt = torch.optim.AdamW(model.param_groups(0.1), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model(ids, pixel_values=images(), labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05
    assert all(abs(g) > 0 for g in model.gates().values())


def test_deepcopy_and_pickle_keep_the_wrapped_layers_working():
    import copy
    import pickle

    model, tok = build("gpt2")
    set_gates(model)
    ids = encode(tok, PROMPT)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        with torch.no_grad():
            assert torch.equal(clone(ids, pixel_values=images()).logits,
                               model(ids, pixel_values=images()).logits)  # fmt: skip
        # the clone's blocks read the clone's media state, not the original's
        assert clone.flamingo_layers[0]._state is clone._state is not model._state


# --- generation and persistence -----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind,attach", [("gpt2", "ff"), ("llama", "fp"), ("gpt2", "pp")])
def test_generate_with_cache_equals_no_cache_greedy(kind, attach):
    model, tok = build(kind)
    set_gates(model, 2.0)
    ids = encode(tok, "<s> a photo of <E> <I> a red car <E> <I> a")
    px, pre = images(), torch.tensor([[c == "p" for c in attach]])
    banned = [model.config.image_token_id, tok.eos_token_id]  # no early stop, no new image
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id,
              suppress_tokens=banned)  # fmt: skip
    cached = model.generate(ids, px, preceding=pre, use_cache=True, **kw)
    plain = model.generate(ids, px, preceding=pre, use_cache=False, **kw)
    assert torch.equal(cached, plain) and cached.shape[1] == ids.shape[1] + 8
    # the manual loop: full forward each step, argmax
    seq = ids
    for _ in range(8):
        with torch.no_grad():
            logits = model(seq, pixel_values=px, preceding=pre).logits[0, -1]
        logits[banned] = -float("inf")
        seq = torch.cat([seq, logits.argmax().view(1, 1)], dim=1)
    assert torch.equal(cached, seq)


def test_generate_left_padded_batch_and_sampled_sequences_follow_their_own_images():
    model, tok = build("gpt2")
    set_gates(model, 2.0)
    pad = tok.pad_token_id
    rows = [
        encode(tok, "<s> a photo of <E> <I> a red car <E> <I> a"),
        encode(tok, "<s> <I> the dog <E> <I> a"),
    ]
    width = max(r.shape[1] for r in rows)
    ids = torch.cat([torch.cat([torch.full((1, width - r.shape[1]), pad), r], 1) for r in rows])
    attn = (ids != pad).long()
    px = torch.cat([images(seed=3), images(seed=4) * 3])
    pre = torch.tensor([[False, True], [True, False]])
    kw = dict(max_new_tokens=6, pad_token_id=pad,
              suppress_tokens=[model.config.image_token_id, tok.eos_token_id])  # fmt: skip
    both = model.generate(ids, px, preceding=pre, attention_mask=attn, do_sample=False, **kw)
    for i, row in enumerate(rows):  # each sample generates as it would alone
        alone = model.generate(row, px[i : i + 1], preceding=pre[i : i + 1], do_sample=False, **kw)
        assert torch.equal(both[i, width:], alone[0, row.shape[1] :])
    # sampling with several sequences per prompt: the cache path equals the no-cache path
    outs = []
    for use_cache in (True, False):
        torch.manual_seed(5)
        outs.append(model.generate(ids, px, preceding=pre, attention_mask=attn, do_sample=True,
                                   num_return_sequences=2, use_cache=use_cache, **kw))  # fmt: skip
    assert outs[0].shape == (4, width + 6) and torch.equal(outs[0], outs[1])
    with pytest.raises(NotImplementedError):
        model.generate(ids, px, preceding=pre, num_beams=2, **kw)


def test_save_trainable_then_load_gives_identical_logits(tmp_path):
    model, tok = build("gpt2")
    set_gates(model)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.01)
    model.save_trainable(tmp_path)
    loaded = Flamingo.load(
        tmp_path, lm=tiny_lm("gpt2"), vision=tiny_vision(), tokenizer=tiny_tokenizer()
    )
    ids = encode(tok, PROMPT)
    with torch.no_grad():
        a = model(ids, pixel_values=images()).logits
        b = loaded.eval()(ids, pixel_values=images()).logits
    assert torch.equal(a, b)
    assert loaded.gates() == model.gates()


def test_from_pretrained_reads_local_directories(tmp_path):
    lm, vision, tok = tiny_lm("gpt2"), tiny_vision(), tiny_tokenizer()
    lm.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    vision.save_pretrained(tmp_path / "vision")
    cfg = FlamingoConfig(
        **{**CFG.__dict__, "lm": str(tmp_path / "lm"), "vision": str(tmp_path / "vision")}
    )
    model, tok2 = Flamingo.from_pretrained(cfg)
    model.save_trainable(tmp_path / "ckpt")
    again = Flamingo.load(tmp_path / "ckpt")
    ids = encode(tok2, PROMPT)
    with torch.no_grad():
        assert torch.equal(model.eval()(ids, pixel_values=images()).logits,
                           again.eval()(ids, pixel_values=images()).logits)  # fmt: skip
    proc = build_image_processor(vision)
    from PIL import Image

    px = proc(images=[Image.new("RGB", (50, 40), "red")], return_tensors="pt")["pixel_values"]
    assert px.shape == (1, 3, IMG_SIZE, IMG_SIZE)
