"""Which image each text token may attend to: the one place that knows the attachment rules.

DESIGN §4. A training window reads ``<BOS> text0 <EOC> <image> text1 <EOC> <image> text2 <EOC> ...``.
Split it into chunks: chunk 0 runs from the start up to and including the ``<EOC>`` before the first
``<image>``; chunk k runs from the k-th ``<image>`` up to and including the ``<EOC>`` before the next
``<image>`` (or the end of the window). Image slot n is the (n+1)-th ``<image>`` token of the window, so
it opens chunk n+1. Then

- slot n attached ``following`` (Flamingo's default, paper §3.1) is seen by chunk n+1, its own
  ``<image>`` token included;
- slot n attached ``preceding`` is seen by chunk n;
- a slot that is invalid (padding), beyond N, or whose ``<image>`` token is not in the window is seen
  by nobody, and a token that sees no image gets an all-False row (xattn then outputs exactly 0).

With one draw per document every token sees at most one image (Flamingo's φ); with per-image draws the
chunk between a ``following`` and a ``preceding`` image sees both.

Unlike lucid (flamingo_pytorch.py L161-179) and OpenFlamingo (src/helpers.py L196-229), which derive the
mask from a cumsum inside the attention, the mask is built once per batch here and handed to every
layer (STYLE (b) model/).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["attachment_mask", "chunk_index"]


def chunk_index(input_ids: Tensor, image_token_id: int, eoc_token_id: int) -> Tensor:
    """Chunk of every token as a LongTensor [B, T]: k ≥ 0, or -1 for a token in no chunk.

    The chunk count is a cumsum of ``<image>`` tokens. Only malformed text has tokens in no chunk:
    tokens after the last ``<EOC>`` that precedes an ``<image>`` but before that ``<image>`` (a
    well-formed sequence has ``<EOC>`` right before every ``<image>``). A chunk with no ``<EOC>``
    before the next ``<image>`` runs up to that ``<image>``. Vectorised: no loop over tokens.
    """
    is_img = input_ids == image_token_id  # (B, T)
    is_eoc = (input_ids == eoc_token_id).long()  # (B, T)
    chunk = is_img.long().cumsum(-1)  # (B, T): images at or before t
    n_chunks = int(chunk.max().item()) + 1 if chunk.numel() else 1
    # <EOC>s per chunk, and <EOC>s of the same chunk strictly before each token
    eoc_total = torch.zeros(chunk.shape[0], n_chunks, dtype=torch.long, device=chunk.device)
    eoc_total.scatter_add_(1, chunk, is_eoc)  # (B, K)
    eoc_cum = is_eoc.cumsum(-1)  # (B, T), inclusive
    eoc_at_chunk_start = eoc_cum - is_eoc  # exclusive cumsum
    first_pos = torch.zeros_like(eoc_total).scatter_reduce_(
        1, chunk, eoc_at_chunk_start, reduce="amin", include_self=False
    )  # (B, K): exclusive count of <EOC>s before each chunk's first token
    before = eoc_at_chunk_start - first_pos.gather(1, chunk)  # same-chunk <EOC>s before t
    after = eoc_total.gather(1, chunk) - before  # same-chunk <EOC>s at or after t
    has_next_image = chunk < is_img.sum(-1, keepdim=True)  # (B, T)
    orphan = has_next_image & (after == 0) & (before > 0)
    return chunk.masked_fill(orphan, -1)


def attachment_mask(
    input_ids: Tensor,
    preceding: Tensor,
    image_valid: Tensor,
    image_token_id: int,
    eoc_token_id: int,
) -> Tensor:
    """Boolean [B, T, N]: True where token t may attend to image slot n (DESIGN §4).

    ``input_ids`` [B, T] long; ``preceding`` [B, N] bool (True: slot n conditions the text before
    it, False: the text after it); ``image_valid`` [B, N] bool (False for padding slots).
    """
    if input_ids.dim() != 2 or preceding.shape != image_valid.shape or preceding.dim() != 2:
        raise ValueError(
            f"expected input_ids [B, T] and preceding/image_valid [B, N], got "
            f"{tuple(input_ids.shape)}, {tuple(preceding.shape)}, {tuple(image_valid.shape)}"
        )
    n_slots = preceding.shape[1]
    chunk = chunk_index(input_ids, image_token_id, eoc_token_id)  # (B, T)
    n_images = (input_ids == image_token_id).sum(-1, keepdim=True)  # (B, 1)
    slot = torch.arange(n_slots, device=input_ids.device)  # (N,)
    present = image_valid.bool() & (slot[None, :] < n_images)  # (B, N): token in window, valid
    # the chunk that sees slot n: n+1 when following, n when preceding
    seen_by = slot[None, :] + 1 - preceding.long()  # (B, N)
    mask = chunk[:, :, None] == seen_by[:, None, :]  # (B, T, N)
    return mask & present[:, None, :]
