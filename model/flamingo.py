"""Flamingo: a frozen vision tower and a frozen causal LM joined by trainable resampler + xattn blocks.

Alayrac et al. 2022, §2 (DESIGN §5). Any transformers vision tower (CLIPVisionModel,
SiglipVisionModel, ...) encodes each image; a Perceiver Resampler turns its features into 64 visual
tokens; a gated xattn-dense block is inserted before every ``cross_attn_every_n_layers``-th decoder
layer of any transformers causal LM (GPT-2, OPT, Llama/Mistral/Qwen, GPT-NeoX). Only the resampler, the
blocks and the embedding rows of the new tokens train; with all gates at 0 the logits are the LM's.

How it attaches to the LM without editing it:
- the decoder layers are found by structure (the largest ``nn.ModuleList`` of identical modules), not by
  a class-name table like OpenFlamingo's (src/factory.py L122-141, which finds neither GPT-2 nor Qwen);
- each chosen layer is replaced in its list by a :class:`FlamingoLayer` that runs the block and then the
  original layer, like OF's FlamingoLayer (src/flamingo_lm.py L6-66);
- visual tokens and the [B, T, N] mask reach the layers through one context manager,
  :meth:`Flamingo.conditioned`, that always clears them (not OF's ``condition_*`` setters);
- ``<image>``, ``<|endofchunk|>`` (and a pad token if missing) get their own small trainable embedding
  and output rows (:class:`ExtendedEmbedding`, :class:`ExtendedHead`); the original matrix stays frozen
  and shared with a tied ``lm_head``, so weight decay can never touch it.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from model.masks import attachment_mask
from model.resampler import PerceiverResampler
from model.xattn import GatedCrossAttentionBlock, PairPlan, plan_pairs

__all__ = [
    "EOC_TOKEN",
    "IMAGE_TOKEN",
    "PAD_TOKEN",
    "Flamingo",
    "FlamingoConfig",
    "FlamingoLayer",
    "add_flamingo_tokens",
    "build_image_processor",
    "find_decoder_layers",
]

log = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
EOC_TOKEN = "<|endofchunk|>"
PAD_TOKEN = "<PAD>"  # added only when the tokenizer has no pad token (GPT-2, OPT's has one)
WEIGHTS_NAME = "flamingo_trainable.safetensors"
CONFIG_NAME = "flamingo_config.json"


@dataclass
class FlamingoConfig:
    """Model hyper-parameters; defaults are Flamingo's (paper §2, App. B.1) or OpenFlamingo's."""

    lm: str | None = None  # HF id or local path of the causal LM (None when passing modules)
    vision: str | None = None  # HF id or local path of the vision model (CLIP, SigLIP, ...)
    cross_attn_every_n_layers: int = 1  # Flamingo-3B: every layer; OF-9B: every 4th
    vision_layer: int = -1  # which hidden state of the vision tower feeds the resampler
    num_latents: int = 64  # visual tokens per image (paper §2.1)
    resampler_depth: int = 6  # paper App. B.1.1
    resampler_heads: int = 8
    resampler_dim_head: int = 64
    xattn_heads: int = 8
    xattn_dim_head: int = 64
    ff_mult: int = 4
    max_images: int = 5  # N images per window (DESIGN §4); sizes the media-slot embedding
    image_token_id: int | None = None  # filled by add_flamingo_tokens
    eoc_token_id: int | None = None
    xattn_impl: str = "fast"  # "fast" (per-image blocks) or "dense" (OpenFlamingo-style reference)
    new_token_ids: list[int] = field(default_factory=list)  # ids with trainable rows, filled in
    base_vocab_size: int | None = None  # the LM's embedding rows before new tokens, filled in

    def __post_init__(self) -> None:
        if self.cross_attn_every_n_layers < 1:
            raise ValueError("cross_attn_every_n_layers must be ≥ 1")
        if self.xattn_impl not in ("fast", "dense"):
            raise ValueError(f"xattn_impl must be 'fast' or 'dense', got {self.xattn_impl!r}")


def add_flamingo_tokens(tokenizer: Any) -> tuple[int, int]:
    """Add ``<image>`` and ``<|endofchunk|>`` as special tokens, and a pad token if missing.

    Idempotent: a tokenizer that already has them keeps its ids. Returns (image_token_id, eoc_token_id).
    """
    from transformers import AddedToken

    vocab = tokenizer.get_vocab()
    missing = [t for t in (IMAGE_TOKEN, EOC_TOKEN) if t not in vocab]
    if missing:
        tokenizer.add_tokens(
            [AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True
        )
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    return (
        tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        tokenizer.convert_tokens_to_ids(EOC_TOKEN),
    )


def build_image_processor(vision: str | nn.Module) -> Any:
    """The image processor for a vision model id/path, or a CLIP-style one sized from a module's config.

    Tiny random-init towers have no processor on disk; their ``config.image_size`` sizes a
    ``CLIPImageProcessor`` (resize shortest side + centre crop, CLIP mean/std).
    """
    from transformers import AutoImageProcessor, CLIPImageProcessor

    if isinstance(vision, str):
        return AutoImageProcessor.from_pretrained(vision)
    size = vision.config.image_size
    return CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )


# --- embeddings with trainable new rows ---------------------------------------------------------


class ExtendedEmbedding(nn.Module):
    """A frozen embedding plus trainable rows for ``new_ids`` (ids may lie inside or past its rows).

    Some LMs have more embedding rows than tokens (Qwen pads to 151936), so an added token's id can
    fall inside the frozen matrix: the lookup table routes exactly the new ids to the extra rows.
    """

    def __init__(self, base: nn.Embedding, new_ids: list[int]) -> None:
        super().__init__()
        self.base = base
        self.num_embeddings = max(base.num_embeddings, max(new_ids) + 1)
        self.embedding_dim = base.embedding_dim
        lookup = torch.full((self.num_embeddings,), -1, dtype=torch.long)
        lookup[torch.tensor(new_ids)] = torch.arange(len(new_ids))
        self.register_buffer("lookup", lookup, persistent=False)
        self.register_buffer("new_ids", torch.tensor(new_ids), persistent=False)
        # new rows start at the mean embedding, as transformers' resize_token_embeddings does
        init = base.weight.detach().float().mean(0, keepdim=True).repeat(len(new_ids), 1)
        self.extra = nn.Parameter(init)

    @property
    def weight(self) -> Tensor:
        """The frozen matrix (for code that reads dtype/device from ``get_input_embeddings()``)."""
        return self.base.weight

    def forward(self, input_ids: Tensor) -> Tensor:
        out = self.base(input_ids.clamp(max=self.base.num_embeddings - 1))  # (..., D)
        slot = self.lookup[input_ids]  # (...,) index into extra, -1 for an original token
        extra = self.extra[slot.clamp(min=0)].to(out.dtype)
        return torch.where((slot >= 0)[..., None], extra, out)


class ExtendedHead(nn.Module):
    """A frozen output projection plus trainable logit rows for the new ids (tied when the LM is)."""

    def __init__(self, base: nn.Linear, new_ids: list[int], extra: nn.Parameter | None) -> None:
        super().__init__()
        self.base = base
        self.num_logits = max(base.out_features, max(new_ids) + 1)
        self.register_buffer("new_ids", torch.tensor(new_ids), persistent=False)
        if extra is None:  # untied LM: own rows, initialised at the mean output row
            init = base.weight.detach().float().mean(0, keepdim=True).repeat(len(new_ids), 1)
            extra = nn.Parameter(init)
        self.extra = extra

    @property
    def weight(self) -> Tensor:
        return self.base.weight

    def forward(self, hidden: Tensor) -> Tensor:
        logits = self.base(hidden)  # (..., V0)
        if self.num_logits > logits.shape[-1]:
            logits = F.pad(logits, (0, self.num_logits - logits.shape[-1]))
        new = hidden @ self.extra.to(hidden.dtype).t()  # (..., n_new)
        return logits.index_copy(-1, self.new_ids, new.to(logits.dtype))


# --- wrapping the decoder layers ----------------------------------------------------------------


class _MediaState:
    """What the inserted blocks read during one forward: visual tokens and the [B, T, N] mask."""

    __slots__ = ("media", "mask", "plan")

    def __init__(self) -> None:
        self.media: Tensor | None = None
        self.mask: Tensor | None = None
        self.plan: PairPlan | None = None  # the fast kernel's pair layout, built once per mask

    def set(self, media: Tensor | None, mask: Tensor | None, fast: bool) -> None:
        self.media, self.mask = media, mask
        self.plan = plan_pairs(mask) if fast and media is not None and mask is not None else None


class FlamingoLayer(nn.Module):
    """A decoder layer with a gated xattn-dense block in front of it; the layer itself is untouched.

    Attribute reads the wrapper cannot answer fall through to the wrapped layer, because some LMs read
    per-layer attributes while looping (Qwen2's ``decoder_layer.attention_type``).
    """

    def __init__(
        self, decoder_layer: nn.Module, xattn: GatedCrossAttentionBlock, state: _MediaState
    ) -> None:
        super().__init__()
        self.decoder_layer = decoder_layer
        self.xattn = xattn
        self._state = state
        self.checkpoint_xattn = False

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get("_modules", {}).get("decoder_layer")
            if inner is None:  # half-built (unpickling): no fall-through, no recursion
                raise
            return getattr(inner, name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Runs ``xattn(hidden_states)`` then the decoder layer with its own arguments unchanged.

        The block runs whether or not there are images (then only its gated FFW acts), so a
        text-only sample gives the same logits alone as beside samples with images.
        """
        in_kwargs = "hidden_states" in kwargs
        hidden = kwargs["hidden_states"] if in_kwargs else args[0]
        media, mask, plan = self._state.media, self._state.mask, self._state.plan
        if media is not None and (mask is None or mask.shape[:2] != hidden.shape[:2]):
            raise RuntimeError(
                f"media mask {None if mask is None else tuple(mask.shape)} does not match "
                f"hidden states {tuple(hidden.shape)}"
            )
        hidden = self._run_block(hidden, media, mask, plan)
        if in_kwargs:
            kwargs["hidden_states"] = hidden
            return self.decoder_layer(*args, **kwargs)
        return self.decoder_layer(hidden, *args[1:], **kwargs)

    def _run_block(
        self, hidden: Tensor, media: Tensor | None, mask: Tensor | None, plan: PairPlan | None
    ) -> Tensor:
        """The gated block in its parameters' dtype, checkpointed when asked (training only)."""
        dtype = self.xattn.attn_gate.dtype
        media = None if media is None else media.to(dtype)
        if self.checkpoint_xattn and self.training:
            # media and mask are passed as arguments so the recompute in backward does not depend
            # on the (by then cleared) media state
            out = checkpoint(self.xattn, hidden.to(dtype), media, mask, plan, use_reentrant=False)
        else:
            out = self.xattn(hidden.to(dtype), media, mask, plan)
        return out.to(hidden.dtype)


def find_decoder_layers(lm: nn.Module) -> nn.ModuleList:
    """The LM's decoder layers: the ``nn.ModuleList`` of identical modules with the most parameters.

    Works for GPT-2 (``transformer.h``), OPT (``model.decoder.layers``), Llama/Mistral/Qwen
    (``model.layers``) and GPT-NeoX (``gpt_neox.layers``) without naming any of them.
    """
    best: tuple[int, nn.ModuleList] | None = None
    for module in lm.modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(m) for m in module}) != 1 or isinstance(module[0], FlamingoLayer):
            continue
        size = sum(p.numel() for p in module.parameters())
        if best is None or size > best[0]:
            best = (size, module)
    expected = getattr(getattr(lm, "config", None), "num_hidden_layers", None)
    if best is None or (expected is not None and len(best[1]) != expected):
        found = "none" if best is None else f"{len(best[1])} × {type(best[1][0]).__name__}"
        raise ValueError(
            f"cannot find the decoder layers of {type(lm).__name__}: expected a ModuleList of "
            f"{expected} identical layers, found {found}"
        )
    return best[1]


def _vision_hidden_size(vision: nn.Module) -> int:
    cfg = vision.config
    return getattr(cfg, "vision_config", cfg).hidden_size


def _lm_hidden_size(lm: nn.Module) -> int:
    cfg = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
    return cfg.hidden_size


def _max_positions(lm: nn.Module) -> tuple[int, str] | None:
    """The LM's position limit and the config field that sets it, where its config has one."""
    cfg = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value, name
    return None


def _cache_length(cache: Any) -> int:
    """Tokens already in a KV cache (0 without one)."""
    return 0 if cache is None else int(cache.get_seq_length())


def _check_pixel_shape(pixel_values: Tensor) -> None:
    """Raise a ValueError unless pixel_values is [B, N, C, H, W]: 4-D pixels would be taken for
    N = C images of H rows each."""
    if pixel_values.dim() != 5:
        raise ValueError(
            f"pixel_values must be [B, N, C, H, W] (N images per sample), got "
            f"{tuple(pixel_values.shape)}; add the N axis, e.g. pixel_values[:, None] for one image"
        )


def _check_pixels(
    input_ids: Tensor, pixel_values: Tensor | None, **per_slot: Tensor | None
) -> None:
    """Raise a ValueError unless input_ids is [B, T], pixel_values [B, N, C, H, W] with the same B,
    and each ``per_slot`` tensor (image_valid, preceding) is [B, N].

    Unchecked, a batch-1 pixel_values broadcasts silently over a batch-2 prompt (dense kernel) or
    fails deep inside the fast kernel."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, T], got {tuple(input_ids.shape)}")
    if pixel_values is None:
        return
    _check_pixel_shape(pixel_values)
    if pixel_values.shape[0] != input_ids.shape[0]:
        raise ValueError(
            f"batch sizes differ: input_ids {tuple(input_ids.shape)} but pixel_values "
            f"{tuple(pixel_values.shape)}"
        )
    for name, tensor in per_slot.items():
        if tensor is not None and tensor.shape != pixel_values.shape[:2]:
            raise ValueError(
                f"{name} must be [B, N] = {tuple(pixel_values.shape[:2])} like pixel_values "
                f"{tuple(pixel_values.shape)}, got {tuple(tensor.shape)}"
            )


def next_token_targets(labels: Tensor, image_token_id: int | None) -> Tensor:
    """The target of each position [B, T-1]: the next label, -100 where there is none to learn.

    The one home of the rule "``<image>`` is never a loss target" (Flamingo §3: the loss is on
    text; DESIGN §5): the loader's labels mark only padding, the training loss and `m3w eval`'s
    per-token losses both read their targets here."""
    targets = labels[:, 1:]
    if image_token_id is not None:
        targets = targets.masked_fill(targets == image_token_id, -100)
    return targets


def _shift_loss(logits: Tensor, labels: Tensor, image_token_id: int | None) -> Tensor:
    """Next-token cross-entropy in fp32 over `next_token_targets`."""
    targets = next_token_targets(labels, image_token_id)
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=-100
    )


class Flamingo(nn.Module):
    """Frozen vision tower → Perceiver Resampler → frozen causal LM with gated xattn-dense blocks."""

    def __init__(self, lm: nn.Module, vision: nn.Module, config: FlamingoConfig) -> None:
        super().__init__()
        if config.image_token_id is None or config.eoc_token_id is None or not config.new_token_ids:
            raise ValueError(
                "config needs image/eoc/new token ids: build with Flamingo.from_models"
            )
        self.config = config
        self.lm, self.vision = lm, vision
        self.tokenizer: Any = None  # set by the constructors; not a module, not saved
        for p in self.parameters():
            p.requires_grad_(False)
        self._wrap_embeddings(config.new_token_ids)

        dim_visual, dim_lm = _vision_hidden_size(vision), _lm_hidden_size(lm)
        self.resampler = PerceiverResampler(
            dim=dim_visual,
            depth=config.resampler_depth,
            heads=config.resampler_heads,
            dim_head=config.resampler_dim_head,
            num_latents=config.num_latents,
            max_images=config.max_images,
            ff_mult=config.ff_mult,
        )
        self._state = _MediaState()
        layers = find_decoder_layers(lm)
        self.n_lm_layers = len(layers)
        every = config.cross_attn_every_n_layers
        for i in range(len(layers)):
            if (i + 1) % every == 0:  # OpenFlamingo's placement (src/flamingo_lm.py L100-110)
                block = GatedCrossAttentionBlock(
                    dim=dim_lm,
                    dim_visual=dim_visual,
                    heads=config.xattn_heads,
                    dim_head=config.xattn_dim_head,
                    ff_mult=config.ff_mult,
                    impl=config.xattn_impl,  # type: ignore[arg-type]
                )
                layers[i] = FlamingoLayer(layers[i], block, self._state)
        self.flamingo_layers = [m for m in layers if isinstance(m, FlamingoLayer)]
        self._check_trainable()

    # --- construction --------------------------------------------------------------------------

    def _wrap_embeddings(self, new_ids: list[int]) -> None:
        """Trainable rows for the new tokens only; tied input/output rows stay tied."""
        emb_in, emb_out = self.lm.get_input_embeddings(), self.lm.get_output_embeddings()
        tied = emb_out is not None and emb_out.weight is emb_in.weight
        ext_in = ExtendedEmbedding(emb_in, new_ids)
        self.lm.set_input_embeddings(ext_in)
        if emb_out is not None:
            ext_out = ExtendedHead(emb_out, new_ids, ext_in.extra if tied else None)
            self.lm.set_output_embeddings(ext_out)
            self.lm.config.vocab_size = max(ext_in.num_embeddings, ext_out.num_logits)

    def _check_trainable(self) -> None:
        """Assert what trains, as OpenFlamingo does (src/factory.py L104-112)."""
        n_emb = len(self.config.new_token_ids) * _lm_hidden_size(self.lm)
        tied = self.lm.get_output_embeddings().extra is self.lm.get_input_embeddings().extra
        expected = (
            sum(p.numel() for p in self.resampler.parameters())
            + sum(p.numel() for m in self.flamingo_layers for p in m.xattn.parameters())
            + n_emb * (1 if tied else 2)
        )
        got = sum(p.numel() for p in self.trainable_parameters())
        if got != expected:
            raise AssertionError(f"{got} trainable parameters, expected {expected}")

    @classmethod
    def from_models(
        cls,
        lm: nn.Module,
        vision: nn.Module,
        tokenizer: Any,
        config: FlamingoConfig | None = None,
    ) -> Flamingo:
        """Wrap given modules (tests, demo: tiny random-init configs); adds the tokens to ``tokenizer``.

        ``vision`` may be a full dual-encoder (CLIPModel, SiglipModel): its ``vision_model`` is used.
        """
        config = config or FlamingoConfig()
        vision = getattr(vision, "vision_model", vision)
        base_vocab = config.base_vocab_size or lm.get_input_embeddings().num_embeddings
        if tokenizer is not None:
            image_id, eoc_id = add_flamingo_tokens(tokenizer)
            for name, have, got in (
                ("image_token_id", config.image_token_id, image_id),
                ("eoc_token_id", config.eoc_token_id, eoc_id),
            ):
                if have is not None and have != got:
                    raise ValueError(f"config.{name}={have} but the tokenizer gives {got}")
            added = range(base_vocab, len(tokenizer))
            new_ids = sorted({image_id, eoc_id, *added})
            config = replace(
                config,
                image_token_id=image_id,
                eoc_token_id=eoc_id,
                new_token_ids=config.new_token_ids or new_ids,
                base_vocab_size=base_vocab,
            )
        model = cls(lm, vision, config)
        model.tokenizer = tokenizer
        return model

    @classmethod
    def from_pretrained(cls, config: FlamingoConfig, tokenizer: Any = None) -> tuple[Flamingo, Any]:
        """Load ``config.lm`` (AutoModelForCausalLM) and ``config.vision``'s vision tower."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if config.lm is None or config.vision is None:
            raise ValueError("from_pretrained needs config.lm and config.vision")
        lm = AutoModelForCausalLM.from_pretrained(config.lm)
        vision = _load_vision_tower(config.vision)
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(config.lm)
        model = cls.from_models(lm, vision, tokenizer, config)
        return model, tokenizer

    # --- conditioning --------------------------------------------------------------------------

    @contextmanager
    def conditioned(self, media: Tensor | None, mask: Tensor | None) -> Iterator[None]:
        """Hand visual tokens [B, N, L, D] and mask [B, T, N] to every block; always cleared."""
        self._state.set(media, mask, self.config.xattn_impl == "fast")
        try:
            yield
        finally:
            self._state.set(None, None, False)

    def encode_images(self, pixel_values: Tensor, image_valid: Tensor | None = None) -> Tensor:
        """pixel_values [B, N, C, H, W] → visual tokens [B, N, L, D]; invalid slots skip the tower.

        N may be 0. An invalid slot's pixels are never read, so they may hold anything (NaN)."""
        _check_pixel_shape(pixel_values)
        bsz, n_img = pixel_values.shape[:2]
        if image_valid is None:
            image_valid = torch.ones(bsz, n_img, dtype=torch.bool, device=pixel_values.device)
        image_valid = image_valid.bool()
        vision_dtype = next(self.vision.parameters()).dtype
        frozen = not any(p.requires_grad for p in self.vision.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            if bool(image_valid.any()):
                out = self.vision(
                    pixel_values=pixel_values[image_valid].to(vision_dtype),
                    output_hidden_states=True,
                )
                feats = out.hidden_states[self.config.vision_layer]  # (M, P, Dv)
            else:  # no valid image (or N = 0): a blank image gives the feature shape, zeros after
                blank = pixel_values.new_zeros(1, *pixel_values.shape[2:], dtype=vision_dtype)
                out = self.vision(pixel_values=blank, output_hidden_states=True)
                feats = out.hidden_states[self.config.vision_layer][:0]
        dtype = self.resampler.latents.dtype
        media = feats.new_zeros(bsz, n_img, *feats.shape[1:])  # (B, N, P, Dv)
        media[image_valid] = feats
        return self.resampler(media.to(dtype))

    # --- forward / generate ----------------------------------------------------------------------

    def forward(
        self,
        input_ids: Tensor,
        pixel_values: Tensor | None = None,
        image_valid: Tensor | None = None,
        media_mask: Tensor | None = None,
        preceding: Tensor | None = None,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        use_cache: bool = False,
        past_key_values: Any = None,
        **lm_kwargs: Any,
    ) -> Any:
        """Logits (and loss) of the LM conditioned on the images.

        input_ids [B, T] long; pixel_values [B, N, C, H, W] float; image_valid [B, N] bool (default
        all valid); media_mask [B, T, N] bool, computed by ``attachment_mask`` from ``preceding``
        [B, N] bool (default all ``following``) when None; attention_mask [B, T]; labels [B, T] with
        -100 = ignore, shifted inside. Without pixel_values every token sees no image: the gated
        blocks still apply their FFW, so a text-only sample gives the same logits alone as beside
        samples with images (and the bare LM's with all gates at 0). Images no token sees skip the
        vision tower. Returns a ``CausalLMOutputWithPast`` (loss, logits [B, T, V], cache).

        Raises a ValueError on inconsistent shapes and on sequences longer than the LM's positions.
        """
        from transformers.modeling_outputs import CausalLMOutputWithPast

        _check_pixels(input_ids, pixel_values, image_valid=image_valid, preceding=preceding)
        if past_key_values is not None:
            lm_kwargs["cache"] = past_key_values
        self._check_length(input_ids.shape[1] + _cache_length(lm_kwargs.get("cache")))
        media = None
        if pixel_values is not None:
            if image_valid is None:
                image_valid = torch.ones(
                    pixel_values.shape[:2], dtype=torch.bool, device=input_ids.device
                )
            if media_mask is None:
                media_mask = self.media_mask(input_ids, preceding, image_valid)
            expected = (*input_ids.shape, pixel_values.shape[1])
            if tuple(media_mask.shape) != expected:
                raise ValueError(
                    f"media_mask must be [B, T, N] = {expected} for input_ids "
                    f"{tuple(input_ids.shape)} and pixel_values {tuple(pixel_values.shape)}, "
                    f"got {tuple(media_mask.shape)}"
                )
            # an image nobody sees is never encoded: no tower time, and broken pixels cannot leak
            media = self.encode_images(pixel_values, image_valid.bool() & media_mask.any(1))
        with self.conditioned(media, media_mask):
            out = self.lm(
                input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache, **lm_kwargs
            )
        loss = (
            None if labels is None else _shift_loss(out.logits, labels, self.config.image_token_id)
        )
        keep = {f.name for f in fields(CausalLMOutputWithPast)} - {"loss"}
        return CausalLMOutputWithPast(loss=loss, **{k: v for k, v in out.items() if k in keep})

    def _check_length(self, length: int) -> None:
        """Raise a ValueError for a sequence past the LM's positions (GPT-2 would index out of
        its position table, on a GPU as a device-side assert)."""
        limit = _max_positions(self.lm)
        if limit is not None and length > limit[0]:
            raise ValueError(
                f"sequence of {length} tokens is longer than the LM's maximum of {limit[0]} "
                f"positions (config.{limit[1]})"
            )

    def media_mask(
        self, input_ids: Tensor, preceding: Tensor | None, image_valid: Tensor
    ) -> Tensor:
        """``attachment_mask`` with this model's token ids; ``preceding`` None = all following."""
        if preceding is None:
            preceding = torch.zeros_like(image_valid, dtype=torch.bool)
        return attachment_mask(
            input_ids,
            preceding.bool(),
            image_valid.bool(),
            self.config.image_token_id,  # type: ignore[arg-type]
            self.config.eoc_token_id,  # type: ignore[arg-type]
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        pixel_values: Tensor | None = None,
        image_valid: Tensor | None = None,
        preceding: Tensor | None = None,
        **generate_kwargs: Any,
    ) -> Tensor:
        """``lm.generate`` conditioned on interleaved images (few-shot prompts), with or without cache.

        Each forward of the LM during decoding sees only the new tokens; a pre-hook keeps the token
        history per sample and recomputes the mask rows of the new tokens from it, so a generated
        token sees the image of its chunk exactly as in a full forward (a generated ``<image>``
        opens a chunk whose slot has no pixels: nobody sees it). Without pixel_values the gated
        FFWs still run on every token, as in ``forward``. Beam search is not supported: it reorders
        samples behind the hook's back. Raises a ValueError on inconsistent shapes, and as soon as
        the sequence would outgrow the LM's positions.
        """
        if generate_kwargs.get("num_beams", 1) > 1:
            raise NotImplementedError("Flamingo.generate supports greedy and sampling, not beams")
        _check_pixels(input_ids, pixel_values, image_valid=image_valid, preceding=preceding)
        self._check_length(input_ids.shape[1])
        media = None
        if pixel_values is not None:
            if image_valid is None:
                image_valid = torch.ones(
                    pixel_values.shape[:2], dtype=torch.bool, device=input_ids.device
                )
            if preceding is None:
                preceding = torch.zeros_like(image_valid, dtype=torch.bool)
            media = self.encode_images(pixel_values, image_valid)
        history: list[Tensor] = []

        def before_step(module: nn.Module, args: tuple, kwargs: dict) -> None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            self._check_length(_cache_length(cache) + ids.shape[1])
            if media is None:
                return
            if cache is None or cache.get_seq_length() == 0:
                history[:] = [ids]
            else:
                history.append(ids)
            full = torch.cat(history, dim=1)
            rep = full.shape[0] // media.shape[0]  # num_return_sequences repeats each sample
            pre, val = (t.repeat_interleave(rep, 0) for t in (preceding, image_valid))
            mask = self.media_mask(full, pre, val)[:, -ids.shape[1] :]
            self._state.set(media.repeat_interleave(rep, 0), mask, self.config.xattn_impl == "fast")

        handle = self.lm.register_forward_pre_hook(before_step, with_kwargs=True)
        try:
            with self.conditioned(media, None):
                return self.lm.generate(input_ids=input_ids, **generate_kwargs)
        finally:
            handle.remove()

    # --- training helpers ----------------------------------------------------------------------

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups: decay only the xattn blocks' matrices; resampler, gates, norms, token rows 0.

        OpenFlamingo (train/train.py ``get_grouped_params``) decays only the gated xattn layers.
        """
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            in_block = ".xattn." in name and not name.startswith("resampler.")
            (decay if in_block and p.dim() >= 2 else no_decay).append(p)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def gates(self) -> dict[str, float]:
        """tanh(gate) of every inserted block, keyed by decoder layer index, for logging.

        A gate this rank does not hold (FSDP shards outside forward) reads NaN rather than failing.
        """

        def value(gate: Tensor) -> float:
            return float(gate.detach().float().tanh().reshape(-1)[0]) if gate.numel() else math.nan

        out: dict[str, float] = {}
        for i, layer in enumerate(self.flamingo_layers):
            idx = (i + 1) * self.config.cross_attn_every_n_layers - 1
            out[f"layer{idx}.attn"] = value(layer.xattn.attn_gate)
            out[f"layer{idx}.ff"] = value(layer.xattn.ff_gate)
        return out

    def gradient_checkpointing_enable(self) -> None:
        """Recompute the LM layers (transformers' own switch) and the xattn blocks in backward."""
        kwargs = {"use_reentrant": False}  # inputs (frozen embeddings) need not require grad
        if hasattr(self.lm, "activation_checkpointing_enable"):  # transformers ≥ 5.x name
            self.lm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        for layer in self.flamingo_layers:
            layer.checkpoint_xattn = True

    # --- persistence -----------------------------------------------------------------------------

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Trainable parameters by name; a tied row matrix appears once (named_parameters dedups)."""
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def save_trainable(self, directory: str | Path, state: dict[str, Tensor] | None = None) -> None:
        """Write the trainable weights (safetensors) and ``flamingo_config.json`` naming the bases.

        ``state`` replaces this module's own trainable tensors, under the same names: a sharded
        (FSDP) model passes the full tensors it gathered."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        own = self.trainable_state_dict()
        source = own if state is None else {n: state[n] for n in own}
        tensors = {n: t.detach().cpu().contiguous() for n, t in source.items()}
        save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
        (directory / CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2) + "\n")

    @classmethod
    def load(
        cls,
        directory: str | Path,
        lm: nn.Module | None = None,
        vision: nn.Module | None = None,
        tokenizer: Any = None,
    ) -> Flamingo:
        """Rebuild from ``save_trainable`` output; loads the base models named in the config unless
        ``lm`` and ``vision`` are given (fresh, unwrapped modules)."""
        from safetensors.torch import load_file

        directory = Path(directory)
        config = FlamingoConfig(**json.loads((directory / CONFIG_NAME).read_text()))
        if lm is None and vision is None:
            model, _ = cls.from_pretrained(config, tokenizer)
        elif lm is None or vision is None:
            raise ValueError("pass both lm and vision, or neither")
        else:
            model = cls.from_models(lm, vision, tokenizer, config)
        state = load_file(str(directory / WEIGHTS_NAME))
        expected = set(model.trainable_state_dict())
        if set(state) != expected:
            raise ValueError(
                f"checkpoint mismatch: missing {sorted(expected - set(state))[:5]}, "
                f"unexpected {sorted(set(state) - expected)[:5]}"
            )
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, tensor in state.items():
                params[name].copy_(tensor)
        return model


def _load_vision_tower(name: str) -> nn.Module:
    """The vision tower of ``name``: e.g. CLIPVisionModel for a CLIP checkpoint, SigLIP likewise."""
    import transformers
    from transformers import AutoConfig, AutoModel

    cfg = AutoConfig.from_pretrained(name)
    if hasattr(cfg, "vision_config"):  # a dual encoder: load only its vision half
        cls_name = type(cfg).__name__.replace("Config", "VisionModel")
        tower_cls = getattr(transformers, cls_name, None)
        if tower_cls is not None:
            return tower_cls.from_pretrained(name)
        return AutoModel.from_pretrained(name).vision_model
    model = AutoModel.from_pretrained(name)
    return getattr(model, "vision_model", model)
