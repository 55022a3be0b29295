import tarfile

import pytest

from m3w_builder.document import Document, ImageNode, TextNode
from m3w_builder.shards import ShardWriter, iter_shard


def _doc(url: str) -> Document:
    return Document(
        url=url,
        nodes=[
            TextNode("first paragraph"),
            ImageNode(
                src="http://x/a.png",
                alt="a",
                width=80,
                height=60,
                data=b"JPEGDATA",
                ext="jpg",
                sha256="0" * 64,
                attach="following",
            ),
            TextNode("second paragraph"),
        ],
        lang="en",
        p_next=0.5,
    )


@pytest.mark.parametrize("schema", ["m3w/2", "m3w/1"])
def test_write_then_read_round_trip(tmp_path, schema):
    path = tmp_path / "000000.tar"
    with ShardWriter(path, schema) as writer:
        writer.write(_doc("http://example.com/1"))
        writer.write(_doc("http://example.com/2"))
    assert path.exists() and not (tmp_path / "000000.tar.tmp").exists()
    samples = list(iter_shard(path))
    assert [s.record["url"] for s in samples] == ["http://example.com/1", "http://example.com/2"]
    doc = samples[0].document()
    assert doc.texts == ["first paragraph", None, "second paragraph"]
    assert doc.image_nodes[0].data == b"JPEGDATA" and doc.image_nodes[0].attach == "following"
    with tarfile.open(path) as tar:
        names = tar.getnames()
    second = "images.mp" if schema == "m3w/2" else "1.jpg"
    assert names[:2] == [f"{doc.key}.json", f"{doc.key}.{second}"]
    assert samples[0].record["schema"] == schema


def test_v2_samples_share_one_member_set_and_one_type_per_field(tmp_path):
    """What makes `datasets` able to read the shards: the same suffixes in every sample, and no
    field whose JSON type changes between samples (a null here, a string there)."""
    import json

    path = tmp_path / "000000.tar"
    docs = [_doc("http://example.com/1"), _doc("http://example.com/2")]
    docs[1].nodes.append(
        ImageNode("http://x/b.png", data=b"PNG", ext="png", width=9, height=9, attach="preceding")
    )
    docs[1].fetched, docs[1].stats = "2026-01-01T00:00:00Z", {"dom": {"removed_nav": 2}}
    with ShardWriter(path) as writer:
        for doc in docs:
            writer.write(doc)
    with tarfile.open(path) as tar:
        names = tar.getnames()
        records = [json.loads(tar.extractfile(n).read()) for n in names if n.endswith(".json")]
    assert {n.split(".", 1)[1] for n in names} == {"json", "images.mp"}
    assert len(names) == 4

    def types(value):
        if isinstance(value, dict):
            return {k: types(v) for k, v in sorted(value.items())}
        if isinstance(value, list):
            return sorted({json.dumps(types(v)) for v in value if v is not None})
        return type(value).__name__

    assert types(records[0]) == types(records[1])
    assert records[0]["fetched"] == "" and records[0]["images"][1]["src_page"] == ""
    doc = list(iter_shard(path))[1].document()
    assert doc.fetched == "2026-01-01T00:00:00Z" and doc.stats == {"dom": {"removed_nav": 2}}
    assert [n.data for n in doc.image_nodes] == [b"JPEGDATA", b"PNG"]
    assert doc.image_nodes[0].src_page is None and doc.image_nodes[1].ext == "png"


def test_identical_input_gives_identical_bytes(tmp_path):
    for name in ("a.tar", "b.tar"):
        with ShardWriter(tmp_path / name) as writer:
            writer.write(_doc("http://example.com/1"))
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()


def test_failed_attempt_leaves_no_shard(tmp_path):
    path = tmp_path / "000001.tar"
    with pytest.raises(RuntimeError), ShardWriter(path) as writer:
        writer.write(_doc("http://example.com/1"))
        raise RuntimeError("worker died")
    assert not path.exists() and not (tmp_path / "000001.tar.tmp").exists()


def test_duplicate_key_rejected(tmp_path):
    with (
        pytest.raises(ValueError, match="duplicate key"),
        ShardWriter(tmp_path / "s.tar") as writer,
    ):
        writer.write(_doc("http://example.com/1"))
        writer.write(_doc("http://example.com/1"))


def test_reads_with_plain_webdataset(tmp_path):
    wds = pytest.importorskip("webdataset")
    path = tmp_path / "000000.tar"
    with ShardWriter(path) as writer:
        writer.write(_doc("http://example.com/1"))
    samples = list(wds.WebDataset(str(path), shardshuffle=False).decode())
    assert len(samples) == 1
    assert samples[0]["json"]["schema"] == "m3w/2"
    assert samples[0]["images.mp"] == [None, b"JPEGDATA", None]  # wds decodes .mp (msgpack)


def test_document_json_rejects_mismatched_lists():
    record = _doc("http://e/1").to_json()
    record["texts"].append("extra")
    with pytest.raises(ValueError, match="differ in length"):
        Document.from_json(record)


def test_rolling_writer_cuts_by_docs_and_bytes(tmp_path):
    from m3w_builder.shards import RollingShardWriter

    with RollingShardWriter(tmp_path, docs_per_shard=3, max_shard_bytes=10**9) as writer:
        for i in range(7):
            writer.write(_doc(f"http://example.com/{i}"))
    assert [info.docs for info in writer.infos] == [3, 3, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000000.tar", "000001.tar", "000002.tar"]
    urls = [
        s.record["url"]
        for name in ("000000", "000001", "000002")
        for s in iter_shard(tmp_path / f"{name}.tar")
    ]
    assert urls == [f"http://example.com/{i}" for i in range(7)]
    # a document is 2 KiB in the tar (json and image, each one header + one padded block); a tar is
    # padded to 10240-byte records after its 1024-byte end marker: 4 documents fit in 10240 bytes
    small = tmp_path / "small"
    with RollingShardWriter(small, docs_per_shard=100, max_shard_bytes=10240) as writer:
        for i in range(9):
            writer.write(_doc(f"http://example.com/{i}"))
    assert [info.docs for info in writer.infos] == [4, 4, 1]
    assert all(info.bytes == 10240 for info in writer.infos)
