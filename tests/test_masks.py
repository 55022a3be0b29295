"""DESIGN §4 encoded as worked sequences and properties.

Sequences are written as strings: ``t`` text, ``I`` an ``<image>``, ``E`` an ``<EOC>``, ``B``/``S``
BOS/EOS, ``p`` padding. Expected masks are written as one character per token: ``.`` sees nothing,
a digit the one image slot the token sees, ``{..}`` for several.
"""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from model.masks import attachment_mask, chunk_index

IMG, EOC = 50, 51
IDS = {"t": 7, "I": IMG, "E": EOC, "B": 1, "S": 2, "p": 0}


def ids(seq: str) -> torch.Tensor:
    return torch.tensor([[IDS[c] for c in seq.split()]])


def mask_of(seq: str, attach: str, n: int | None = None, valid: list[bool] | None = None):
    """attach: one letter per slot, f(ollowing) or p(receding)."""
    n = len(attach) if n is None else n
    pre = torch.tensor([[c == "p" for c in attach]])
    val = torch.tensor([valid if valid is not None else [True] * n])
    return attachment_mask(ids(seq), pre, val, IMG, EOC)[0]


def render(mask: torch.Tensor) -> str:
    out = []
    for row in mask.tolist():
        seen = [str(i) for i, v in enumerate(row) if v]
        out.append("." if not seen else seen[0] if len(seen) == 1 else "{" + "".join(seen) + "}")
    return " ".join(out)


DOC = "B t t E I t t E I t E S"  # <BOS> text0 <EOC> <image> text1 <EOC> <image> text2 <EOC> <EOS>


def test_all_following():
    # text0 sees nothing; each image is seen from its own <image> token to the end of its chunk
    assert render(mask_of(DOC, "ff")) == ". . . . 0 0 0 0 1 1 1 1"


def test_all_preceding():
    # each image is seen by the chunk before it; text after the last image sees nothing
    assert render(mask_of(DOC, "pp")) == "0 0 0 0 1 1 1 1 . . . ."


def test_mixed_per_image():
    # following then preceding: chunk 1 sees both; preceding then following: chunk 1 sees neither
    assert render(mask_of(DOC, "fp")) == ". . . . {01} {01} {01} {01} . . . ."
    assert render(mask_of(DOC, "pf")) == "0 0 0 0 . . . . 1 1 1 1"


def test_images_beyond_n_and_invalid_slots_are_seen_by_nobody():
    seq = "t E I t E I t E I t E"
    # three <image> tokens but only N = 2 slots: the third image's chunk sees nothing
    assert render(mask_of(seq, "ff")) == ". . 0 0 0 1 1 1 . . ."
    assert render(mask_of(seq, "pp")) == "0 0 1 1 1 . . . . . ."
    # a padded (invalid) slot is seen by nobody
    assert render(mask_of(seq, "fff", valid=[True, False, True])) == ". . 0 0 0 . . . 2 2 2"


def test_slot_without_image_token_is_seen_by_nobody():
    # a valid slot whose <image> is not in the window (loader bug or padding) must stay invisible
    assert render(mask_of("t E I t E", "pp")) == "0 0 . . ."


def test_window_that_cuts_a_chunk():
    # the window starts inside the text of a chunk whose image was cut off: it is chunk 0 here
    seq = "t t E I t E I t"  # ... and ends inside chunk 2 (no final <EOC>)
    assert render(mask_of(seq, "ff")) == ". . . 0 0 0 1 1"
    assert render(mask_of(seq, "pp")) == "0 0 0 1 1 1 . ."


def test_text_after_the_last_image_and_padding():
    seq = "B t E I t E S p p"
    assert render(mask_of(seq, "f")) == ". . . 0 0 0 0 0 0"
    assert render(mask_of(seq, "p")) == "0 0 0 . . . . . ."


def test_sequence_starting_with_an_image():
    assert render(mask_of("I t E I t E", "ff")) == "0 0 0 1 1 1"
    assert render(mask_of("I t E I t E", "pf")) == ". . . 1 1 1"


def test_tokens_between_eoc_and_next_image_are_in_no_chunk():
    # malformed text: chunk 0 ends at the <EOC> before the first <image> (DESIGN §4)
    assert chunk_index(ids("t E t I t"), IMG, EOC).tolist() == [[0, 0, -1, 1, 1]]
    assert render(mask_of("t E t I t", "p")) == "0 0 . . ."
    # several <EOC>s in one chunk: the chunk runs to the last one; no <EOC> at all: to the image
    assert chunk_index(ids("I t E t E I"), IMG, EOC).tolist() == [[1, 1, 1, 1, 1, 2]]
    assert chunk_index(ids("t t I t"), IMG, EOC).tolist() == [[0, 0, 1, 1]]


def test_batch_rows_are_independent():
    a, b = ids("t E I t E I t"), ids("I t E t E t t")
    pre = torch.tensor([[False, True], [True, False]])
    val = torch.tensor([[True, True], [True, True]])
    both = attachment_mask(torch.cat([a, b]), pre, val, IMG, EOC)
    assert torch.equal(both[0], attachment_mask(a, pre[:1], val[:1], IMG, EOC)[0])
    assert torch.equal(both[1], attachment_mask(b, pre[1:], val[1:], IMG, EOC)[0])
    assert both.shape == (2, 7, 2) and both.dtype == torch.bool


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="expected input_ids"):
        attachment_mask(
            ids("t I"), torch.zeros(1, 2, dtype=torch.bool), torch.ones(1, 3).bool(), IMG, EOC
        )


# --- properties ----------------------------------------------------------------------------------


@st.composite
def documents(draw):
    """A window of a well-formed document: random text chunks, <EOC> before each <image>."""
    n_images = draw(st.integers(0, 7))
    toks: list[int] = [IDS["B"]] if draw(st.booleans()) else []
    for _ in range(n_images):
        toks += [IDS["t"]] * draw(st.integers(0, 4)) + [EOC, IMG]
    toks += [IDS["t"]] * draw(st.integers(0, 4)) + ([EOC] if draw(st.booleans()) else [])
    start = draw(st.integers(0, max(len(toks) - 1, 0)))  # a window that may cut a chunk
    toks = toks[start:] or [IDS["t"]]
    n = draw(st.integers(1, 6))
    per_document = draw(st.booleans())
    if per_document:
        pre = [draw(st.booleans())] * n
    else:
        pre = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    valid = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    return toks, pre, valid, per_document


def reference(toks: list[int], pre: list[bool], valid: list[bool]) -> list[set[int]]:
    """The rules of DESIGN §4 restated token by token, in plain Python."""
    img_pos = [i for i, t in enumerate(toks) if t == IMG]
    chunks = []
    for i in range(len(toks)):
        k = sum(1 for p in img_pos if p <= i)
        nxt = next((p for p in img_pos if p > i), None)
        if nxt is not None:
            last_eoc = max((j for j in range(i, nxt) if toks[j] == EOC), default=None)
            prev_img = max((p for p in img_pos if p <= i), default=-1)
            eoc_before = any(toks[j] == EOC for j in range(prev_img + 1, i))
            if last_eoc is None and eoc_before:
                k = -1
        chunks.append(k)
    out = []
    for k in chunks:
        seen = set()
        for n in range(len(pre)):
            if not valid[n] or n >= len(img_pos) or k < 0:
                continue
            if (pre[n] and k == n) or (not pre[n] and k == n + 1):
                seen.add(n)
        out.append(seen)
    return out


@settings(max_examples=300, deadline=None)
@given(documents())
def test_matches_the_rules_and_sees_at_most_one_image_per_document(doc):
    toks, pre, valid, per_document = doc
    mask = attachment_mask(
        torch.tensor([toks]), torch.tensor([pre]), torch.tensor([valid]), IMG, EOC
    )[0]
    got = [{n for n, v in enumerate(row) if v} for row in mask.tolist()]
    assert got == reference(toks, pre, valid)
    # a token never sees an image outside its chunk's attachment: slot n is seen only by chunk
    # n (preceding) or n+1 (following)
    chunk = chunk_index(torch.tensor([toks]), IMG, EOC)[0].tolist()
    for t, seen in enumerate(got):
        for n in seen:
            assert chunk[t] == (n if pre[n] else n + 1)
    if per_document:
        assert max((len(s) for s in got), default=0) <= 1
    else:
        assert max((len(s) for s in got), default=0) <= 2
