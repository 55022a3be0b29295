"""attach.sample: the per-document / per-image preceding-following draw (DESIGN §4)."""

from __future__ import annotations

import math

import pytest

from m3w_builder.attach import FOLLOWING, PRECEDING, sample
from m3w_builder.document import Document, ImageNode, TextNode


def _doc(i: int, n_images: int = 3) -> Document:
    nodes: list = [TextNode(f"intro {i}")]
    for j in range(n_images):
        nodes.append(ImageNode(src=f"http://x/{i}/{j}.png", data=b"x", ext="jpg"))
        nodes.append(TextNode(f"text {i} {j}"))
    return Document(url=f"http://example.com/page/{i}", nodes=nodes)


def _attachments(doc: Document) -> list[str | None]:
    return [n.attach for n in doc.image_nodes]


def test_same_key_and_seed_give_the_same_draw_and_input_is_untouched():
    doc = _doc(1)
    a = sample(doc, seed=7, mode="per-image")
    b = sample(_doc(1), seed=7, mode="per-image")
    assert _attachments(a) == _attachments(b)
    assert _attachments(doc) == [None, None, None]  # a copy, not an in-place edit
    assert a.p_next == 0.5 and doc.p_next is None
    assert a.image_nodes[0].data is doc.image_nodes[0].data  # bytes shared, not copied


def test_seed_changes_the_draw():
    docs = [_doc(i, n_images=1) for i in range(200)]
    draws = {seed: [_attachments(sample(d, seed=seed))[0] for d in docs] for seed in (0, 1)}
    differing = sum(a != b for a, b in zip(draws[0], draws[1], strict=True))
    assert 60 < differing < 140  # independent fair draws disagree about half the time


@pytest.mark.parametrize("p_next", [0.5, 0.2])
def test_per_document_draw_is_one_value_per_page_at_rate_p_next(p_next):
    n = 3000
    following = 0
    for i in range(n):
        attach = _attachments(sample(_doc(i), seed=3, mode="per-document", p_next=p_next))
        assert len(set(attach)) == 1 and attach[0] in (FOLLOWING, PRECEDING)
        following += attach[0] == FOLLOWING
    sigma = math.sqrt(p_next * (1 - p_next) / n)
    assert abs(following / n - p_next) < 5 * sigma


def test_per_image_draw_mixes_within_pages_at_rate_p_next():
    n_docs, per_doc = 1000, 3
    following = mixed = 0
    for i in range(n_docs):
        attach = _attachments(sample(_doc(i, per_doc), seed=3, mode="per-image", p_next=0.5))
        following += attach.count(FOLLOWING)
        mixed += len(set(attach)) > 1
    n = n_docs * per_doc
    assert abs(following / n - 0.5) < 5 * math.sqrt(0.25 / n)
    # P(all three equal) = 1/4, so about 3/4 of the pages mix both attachments
    assert abs(mixed / n_docs - 0.75) < 5 * math.sqrt(0.75 * 0.25 / n_docs)


@pytest.mark.parametrize("mode", ["per-document", "per-image"])
def test_extreme_rates_are_deterministic(mode):
    for i in range(50):
        assert set(_attachments(sample(_doc(i), seed=0, mode=mode, p_next=1.0))) == {FOLLOWING}
        assert set(_attachments(sample(_doc(i), seed=0, mode=mode, p_next=0.0))) == {PRECEDING}


def test_attachment_is_stored_per_image_in_the_shard_record():
    record = sample(_doc(5), seed=1, mode="per-image", p_next=0.5).to_json()
    stored = [img["attach"] for img in record["images"] if img is not None]
    assert len(stored) == 3 and set(stored) <= {FOLLOWING, PRECEDING}
    assert record["p_next"] == 0.5 and all(t is not None for t in record["texts"][::2])


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="attach mode"):
        sample(_doc(0), seed=0, mode="per-chunk")
    with pytest.raises(ValueError, match="p_next"):
        sample(_doc(0), seed=0, p_next=1.5)
