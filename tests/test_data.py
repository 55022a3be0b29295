"""pipelines/train/data.py over real tar shards written with ShardWriter and Pillow-drawn images."""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from m3w_builder.document import Document, ImageNode, TextNode
from m3w_builder.shards import ShardWriter
from pipelines.demo import synthetic, tiny
from pipelines.train import data


@pytest.fixture(scope="module")
def tokenizer():
    docs = [synthetic.synthetic_document(i).text() for i in range(40)]
    return tiny.train_tokenizer(docs + ["alpha beta gamma delta"], vocab_size=400)


@pytest.fixture(scope="module")
def processor():
    return tiny.tiny_image_processor(32)


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    synthetic.write_synthetic_shards(out, shards=6, docs_per_shard=5, seed=1)
    return out


def _tok(tokenizer) -> data.TokenIds:
    return data.TokenIds.from_tokenizer(tokenizer)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _png(colour=(200, 20, 20)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (80, 80), colour).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- layout, window, labels, mask
def test_layout_matches_design_sequence(tokenizer):
    tok = _tok(tokenizer)
    a, b = data.ImageRef(b"x", False), data.ImageRef(b"y", True)
    lay = data.layout(["alpha", a, "beta", b, "gamma"], tokenizer, tok)
    expected = [
        tok.bos,
        *_ids(tokenizer, "alpha"),
        tok.eoc,
        tok.image,
        *_ids(tokenizer, " beta"),
        tok.eoc,
    ] + [tok.image, *_ids(tokenizer, " gamma"), tok.eoc, tok.eos]
    assert lay.ids == expected
    assert [lay.ids[p] for p in lay.image_pos] == [tok.image, tok.image]
    assert lay.images == [a, b]


def test_pair_is_the_one_image_case(tokenizer):
    tok = _tok(tokenizer)
    lay = data.layout([data.ImageRef(b"x", False), "alpha"], tokenizer, tok)
    assert lay.ids == [tok.bos, tok.image, *_ids(tokenizer, " alpha"), tok.eoc, tok.eos]


def test_window_takes_first_n_images_inside_it(tokenizer):
    tok = _tok(tokenizer)
    refs = [data.ImageRef(bytes([i]), False) for i in range(8)]
    nodes: list = ["alpha"]
    for r in refs:
        nodes += [r, "beta"]
    lay = data.layout(nodes, tokenizer, tok)
    win = data.choose_window(lay, seq_len=len(lay.ids), max_images=5, rng=random.Random(0))
    assert win.images == refs[:5]
    # a short window: every chosen image has its <image> token inside it, in order, at most N
    for seed in range(20):
        win = data.choose_window(lay, seq_len=12, max_images=2, rng=random.Random(seed))
        assert len(win.ids) == 12
        inside = [i for i, t in enumerate(win.ids) if t == tok.image]
        assert len(win.images) == min(2, len(inside))
        start = win.start
        assert lay.ids[start : start + 12] == win.ids
        first = [im for p, im in zip(lay.image_pos, lay.images) if start <= p < start + 12][:2]
        assert win.images == first


def test_tensors_labels_and_mask_by_hand(tokenizer, processor):
    """A 2-image window: slot 0 following, slot 1 preceding; one image corrupt → invalid slot."""
    tok = _tok(tokenizer)
    cfg = data.DataConfig(seq_len=24, max_images=3, batch_size=1)
    nodes = ["alpha", data.ImageRef(_png(), False), "beta", data.ImageRef(b"not an image", True)]
    nodes += ["gamma"]
    lay = data.layout(nodes, tokenizer, tok)
    win = data.choose_window(lay, cfg.seq_len, cfg.max_images, random.Random(0))
    transform = data.make_image_transform(processor)
    counts = data.Counts()
    t = data.window_to_tensors(win, cfg, tok, transform, (3, 32, 32), counts)
    n = len(lay.ids)
    assert t["input_ids"][:n].tolist() == lay.ids
    assert (t["input_ids"][n:] == tok.pad).all() and t["attention_mask"].sum() == n
    labels = t["labels"]
    assert (labels[n:] == -100).all()
    real = t["attention_mask"] == 1
    assert torch.equal(labels[real], t["input_ids"][real])
    # `<image>` is never a target: the model's rule, wherever a loss is taken
    from model.flamingo import next_token_targets

    targets = next_token_targets(labels[None], tok.image)[0]
    assert (targets[t["input_ids"][1:] == tok.image] == -100).all()
    assert torch.equal(targets[targets != -100], t["input_ids"][1:][targets != -100])
    assert t["image_valid"].tolist() == [True, False, False]  # the second image did not decode
    assert t["preceding"].tolist() == [False, True, False]
    assert counts["data.image_decode"] == 1
    assert len(t["images"]) == 1  # only the decodable image
    batch = data.collate([t], tok, transform, (3, 32, 32))
    assert batch["images"].shape == (1, 3, 32, 32) and batch["images"].abs().sum() > 0  # packed
    padded = data.pad_images(batch["images"], batch["image_valid"])
    assert padded.shape == (1, 3, 3, 32, 32)
    assert torch.equal(padded[0, 0], batch["images"][0]) and padded[0, 1:].abs().sum() == 0

    pytest.importorskip("model.masks")
    mask = batch["media_mask"][0]  # [T, N]
    img0, img1 = lay.image_pos
    # chunk 0 = [0, img0) sees nothing; chunk 1 = [img0, img1) sees slot 0 (following);
    # slot 1 is preceding but invalid → nobody; chunk 2 and padding see nothing.
    expected = torch.zeros(cfg.seq_len, cfg.max_images, dtype=torch.bool)
    expected[img0:img1, 0] = True
    assert torch.equal(mask, expected)
    # with a valid second image: chunk 1 also sees slot 1 (preceding, per-image draws see both)
    t["image_valid"][1] = True
    mask = data.collate([t], tok, transform, (3, 32, 32))["media_mask"][0]
    expected[img0:img1, 1] = True
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("mode", ["following", "preceding", "resample"])
def test_attach_override(mode):
    refs = [data.ImageRef(b"", i % 2 == 0) for i in range(4)]
    doc = data.DocSample("k" * 32, ["a", *refs], None)  # type: ignore[arg-type]
    data.resolve_attachment(doc, data.DataConfig(attach=mode), epoch=0)
    flags = {r.preceding for r in refs}
    assert len(flags) == 1  # one draw per document
    if mode != "resample":
        assert flags == {mode == "preceding"}


# ---------------------------------------------------------------- streams over shards
def _stream(shard_dir, tokenizer, processor, **kw):
    rank, world = kw.pop("rank", 0), kw.pop("world", 1)
    positions, rotate = kw.pop("positions", None), kw.pop("rotate", 0)
    epochs = kw.pop("epochs", 1)
    defaults = dict(batch_size=2, seq_len=48, num_workers=2, shuffle_buffer=0)
    cfg = data.DataConfig(shards=str(shard_dir), **{**defaults, **kw})
    return data.ShardStream(
        cfg,
        tokenizer,
        data.make_image_transform(processor),
        (3, 32, 32),
        rank=rank,
        world=world,
        positions=positions,
        rotate=rotate,
        epochs=epochs,
    )


def _keys_of(stream) -> list[str]:
    """Document keys in stream order, recovered by re-reading with the positions of each batch."""
    keys = []
    for w in range(stream.workers):
        for win, _, _ in stream.windows(w, data.WorkerPosition(), data.Counts()):
            keys.append(win.doc_key)
    return keys


def test_split_two_ranks_two_workers_no_duplicates(shard_dir, tokenizer, processor):
    all_keys = _keys_of(_stream(shard_dir, tokenizer, processor, num_workers=1))
    assert len(all_keys) == 30 and len(set(all_keys)) == 30
    per_rank = [
        _keys_of(_stream(shard_dir, tokenizer, processor, rank=r, world=2, num_workers=2))
        for r in range(2)
    ]
    seen = per_rank[0] + per_rank[1]
    assert sorted(seen) == sorted(all_keys)  # every document once, none twice across 2×2 workers
    assert set(per_rank[0]).isdisjoint(per_rank[1])


def test_fewer_shards_than_workers_is_fine(tmp_path, tokenizer, processor):
    synthetic.write_synthetic_shards(tmp_path, shards=1, docs_per_shard=4)
    stream = _stream(tmp_path, tokenizer, processor, num_workers=3)
    batches = list(stream)
    assert sum(len(b["input_ids"]) for b in batches) == 4


def test_dataloader_workers_give_every_doc_once(shard_dir, tokenizer, processor):
    stream = _stream(shard_dir, tokenizer, processor, num_workers=2, shuffle_buffer=8)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
    batches = list(loader)
    assert sum(len(b["input_ids"]) for b in batches) == 30
    assert {b["_position"]["worker"] for b in batches} == {0, 1}
    for b in batches:
        assert b["images"].shape == (int(b["image_valid"].sum()), 3, 32, 32)
        assert b["media_mask"] is None or b["media_mask"].shape == (len(b["input_ids"]), 48, 5)


def test_corrupt_and_truncated_shards_are_counted_and_skipped(tmp_path, tokenizer, processor):
    synthetic.write_synthetic_shards(tmp_path, shards=2, docs_per_shard=5, seed=3)
    good = (tmp_path / "000001.tar").read_bytes()
    (tmp_path / "000001.tar").write_bytes(good[: len(good) // 2 + 100])  # truncated mid-member
    (tmp_path / "000002.tar").write_bytes(b"\x00garbage" * 300)  # not a tar
    # a shard with one bad JSON record and one good record
    with ShardWriter(tmp_path / "000003.tar") as w:
        w.write(synthetic.synthetic_document(99, seed=3))
        w.close()
    with tarfile.open(tmp_path / "000003.tar", "a") as tar:
        info = tarfile.TarInfo("ffffffffffffffffffffffffffffffff.json")
        payload = b"{not json"
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    stream = _stream(tmp_path, tokenizer, processor, num_workers=1, batch_size=1)
    batches = list(stream)
    counts = data.Counts()
    for b in batches:
        counts.update(b["_counts"])
    n_docs = len(batches)
    assert 5 + 1 <= n_docs < 5 + 5 + 1  # shard 0 whole, part of shard 1, the good doc of shard 3
    assert counts["data.shard_truncated"] >= 1
    assert counts["data.bad_json"] == 1


def test_missing_image_member_is_counted_once(tmp_path, tokenizer, processor):
    """Regression: an absent member was counted as data.missing_image and again as image_decode."""
    record = {
        "schema": "m3w/1",
        "url": "http://e/1",
        "texts": ["alpha beta gamma delta", None, "epsilon zeta"],
        "images": [None, {"member": "1.jpg", "attach": "following"}, None],
    }
    with tarfile.open(tmp_path / "000000.tar", "w") as tar:
        payload = json.dumps(record).encode()
        info = tarfile.TarInfo(f"{1:032x}.json")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    stream = _stream(tmp_path, tokenizer, processor, num_workers=1, batch_size=1)
    (batch,) = list(stream)
    counts = data.Counts()
    counts.update(batch["_counts"])
    assert counts["data.missing_image"] == 1 and counts["data.image_decode"] == 0
    assert not batch["image_valid"].any()


def test_pairs_dataset(tmp_path, tokenizer, processor):
    with tarfile.open(tmp_path / "pairs.tar", "w") as tar:
        for i in range(3):
            for ext, payload in (
                ("jpg", synthetic.draw_shape("red", "circle")),
                ("txt", b"alpha beta"),
            ):
                info = tarfile.TarInfo(f"{i:032x}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    stream = _stream(tmp_path, tokenizer, processor, num_workers=1, batch_size=3)
    (batch,) = list(stream)
    tok = _tok(tokenizer)
    assert batch["image_valid"].sum(1).tolist() == [1, 1, 1]
    assert (batch["input_ids"][:, 1] == tok.image).all()


@pytest.mark.parametrize("buffer", [0, 7])
def test_resume_from_position_reproduces_the_stream(shard_dir, tokenizer, processor, buffer):
    full = list(_stream(shard_dir, tokenizer, processor, shuffle_buffer=buffer, epochs=2))
    cut = 5  # batches consumed before the "crash"
    positions = {}
    for b in full[:cut]:
        p = dict(b["_position"])
        worker = p.pop("worker")
        positions[worker] = data.WorkerPosition(**p)
    resumed = _stream(
        shard_dir, tokenizer, processor, shuffle_buffer=buffer, epochs=2, positions=positions,
        rotate=cut % 2,
    )  # fmt: skip
    rest = list(resumed)
    assert len(rest) == len(full) - cut
    for a, b in zip(full[cut:], rest):
        assert torch.equal(a["input_ids"], b["input_ids"])
        assert torch.equal(a["images"], b["images"])


def test_epochs_reshuffle_shards(shard_dir, tokenizer, processor):
    stream = _stream(shard_dir, tokenizer, processor, num_workers=1)
    cfg = stream.cfg
    urls = data.expand_shards(cfg.shards)
    assert data.shard_order(urls, cfg, 0) != data.shard_order(urls, cfg, 1)
    assert sorted(data.shard_order(urls, cfg, 1)) == sorted(urls)


def test_expand_shards_brace_folder_and_list(shard_dir, tmp_path):
    brace = data.expand_shards(f"{shard_dir}/{{000000..000005}}.tar")
    assert brace == data.expand_shards(str(shard_dir))
    (tmp_path / "list.txt").write_text("\n".join(brace[:2]) + "\n")
    assert data.expand_shards(str(tmp_path / "list.txt")) == brace[:2]
    with pytest.raises(ValueError):
        data.expand_shards(str(tmp_path / "empty-dir-glob-*.tar"))


def test_m3w_record_roundtrip_through_loader(tmp_path, tokenizer, processor):
    doc = Document(url="http://x.test/a", nodes=[TextNode("alpha beta")])
    doc.nodes.append(ImageNode(src="a.png", data=_png(), ext="png", attach="preceding"))
    with ShardWriter(tmp_path / "000000.tar") as w:
        w.write(doc)
        w.close()
    (batch,) = list(_stream(tmp_path, tokenizer, processor, num_workers=1, batch_size=1))
    assert batch["image_valid"][0].tolist() == [True, False, False, False, False]
    assert batch["preceding"][0, 0]
    record = json.loads(json.dumps(doc.to_json()))
    assert record["images"][1]["attach"] == "preceding"


# ---------------------------------------------------------------- shards built from the dev corpus
@pytest.mark.slow
@pytest.mark.corpus
def test_loader_over_corpus_built_shards(corpus, tmp_path, tokenizer, processor):
    """Real archived pages → `m3w build` (in-process stages, images from the WARC) → the loader."""
    from m3w_builder.config import BuildConfig
    from pipelines.build.job import JobOptions, run_build

    config = BuildConfig.for_profile("m3w")
    config.fetch.offline = True  # images only from the archive: no network in tests
    warcs = sorted(str(p) for p in (corpus / "warc" / "aut").glob("*.warc*"))
    report = run_build(warcs, config, JobOptions(out=str(tmp_path), progress=False), use_ray=False)
    if report["documents"] == 0:
        pytest.skip("the corpus build kept no document with an image")
    stream = _stream(tmp_path / "shards", tokenizer, processor, num_workers=1, batch_size=1)
    stream.cfg.seq_len = 256
    batches = list(stream)
    assert len(batches) == report["documents"]
    tok = _tok(tokenizer)
    for b in batches:
        ids = b["input_ids"][0]
        n_img = int((ids == tok.image).sum())
        assert int(b["image_valid"][0].sum()) == min(n_img, 5)  # every image in the window decodes
        assert ids[0] == tok.bos or b["attention_mask"][0].sum() == 256
        if b["media_mask"] is not None:  # a token attends only to valid slots
            assert not b["media_mask"][0][:, ~b["image_valid"][0]].any()


def test_pipe_urls_stream_shards(shard_dir, tokenizer, processor):
    """`pipe:` URLs (what object-storage CLIs give) stream through webdataset's gopen."""
    pattern = f"pipe:cat {shard_dir}/{{000000..000005}}.tar"
    urls = data.expand_shards(pattern)
    assert len(urls) == 6 and urls[0] == f"pipe:cat {shard_dir}/000000.tar"
    keys = _keys_of(_stream(pattern, tokenizer, processor, num_workers=1))
    assert sorted(keys) == sorted(_keys_of(_stream(shard_dir, tokenizer, processor, num_workers=1)))


def test_m3w_1_and_m3w_2_shards_give_the_same_batches(tmp_path, tokenizer, processor):
    """The loader reads both layouts (one member per image, and m3w/2's one images member) into
    the same tensors: the same documents written both ways give equal batches."""
    docs = [synthetic.synthetic_document(i, 3, max_images=3) for i in range(6)]
    for schema in ("m3w/1", "m3w/2"):
        with ShardWriter(tmp_path / schema.replace("/", "_") / "000000.tar", schema) as w:
            for doc in docs:
                w.write(doc)
    old, new = (
        list(_stream(tmp_path / name, tokenizer, processor, num_workers=1, batch_size=3))
        for name in ("m3w_1", "m3w_2")
    )
    assert len(old) == len(new) == 2
    for a, b in zip(old, new):
        assert torch.equal(a["input_ids"], b["input_ids"])
        assert torch.equal(a["images"], b["images"]) and bool(a["image_valid"].any())
        assert torch.equal(a["image_valid"], b["image_valid"])
        assert a["_counts"] == b["_counts"]


def test_an_m3w_2_images_member_that_does_not_match_is_a_counted_skip(
    tmp_path, tokenizer, processor
):
    import msgpack

    doc, good = (synthetic.synthetic_document(i, 3, max_images=2) for i in range(2))
    record, _ = doc.to_shard()
    good_record, good_images = good.to_shard()
    with tarfile.open(tmp_path / "000000.tar", "w") as tar:
        for name, payload in (
            (f"{doc.key}.json", json.dumps(record).encode()),
            (f"{doc.key}.images.mp", msgpack.packb([None])),  # one entry for many positions
            (f"{good.key}.json", json.dumps(good_record).encode()),  # a batch to carry the counts
            (f"{good.key}.images.mp", good_images),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    counts = data.Counts()
    for batch in _stream(tmp_path, tokenizer, processor, num_workers=1, batch_size=1):
        counts.update(batch["_counts"])
    assert counts["data.bad_record"] == 1


def test_the_control_gives_every_slot_an_image_of_another_document():
    """`images: shuffled` (the control run of issue 13): each document's slots hold pictures of another
    document of the batch (the next one with pictures, cycling through its pictures when it has
    fewer), and a batch with one picturing document is left as it is."""
    from pipelines.train.data import images_of_other_documents

    valid = torch.tensor([[1, 1, 1], [0, 0, 0], [1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    owner = [d for d, row in enumerate(valid.tolist()) for ok in row if ok]
    images = torch.arange(len(owner), dtype=torch.float32)[:, None]
    moved = images_of_other_documents(images, valid)[:, 0].long().tolist()
    assert all(owner[src] != owner[slot] for slot, src in enumerate(moved))
    assert len(moved) == len(owner)
    alone = torch.tensor([[1, 1], [0, 0]], dtype=torch.bool)
    assert images_of_other_documents(images[:2], alone).equal(images[:2])


def test_an_unknown_images_mode_is_a_config_error():
    from m3w_builder.errors import ConfigError
    from pipelines.train.data import DataConfig

    with pytest.raises(ConfigError, match="images must be one of"):
        DataConfig(shards="x", images="shuffle")
