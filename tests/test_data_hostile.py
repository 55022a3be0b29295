"""The trainer's loader against bad records (issue 14 §5): each is counted `data.bad_record`, logged
and skipped, and the stream goes on; the good records around it are all trained on. The check is
the one `Document.from_json` uses (`m3w_builder.document.check_record`)."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from m3w_builder.document import Document
from pipelines.demo import synthetic, tiny
from pipelines.train import data


def _good(i: int) -> dict:
    return {
        "schema": "m3w/1",
        "url": f"http://e/{i}",
        "texts": ["alpha beta gamma delta", None, "epsilon zeta"],
        "images": [None, {"member": "1.jpg", "attach": "following"}, None],
    }


def _with(**fields) -> bytes:
    return json.dumps({**_good(0), **fields}).encode()


def _image(**fields) -> bytes:
    rec = _good(0)
    rec["images"][1] = {**rec["images"][1], **fields}
    return json.dumps(rec).encode()


BAD = {
    "json_list": json.dumps([_good(0)]).encode(),
    "json_string": b'"m3w/1"',
    "texts_int": _with(texts=5),
    "texts_dict": _with(texts={"0": "a"}, images={"0": None}),
    "text_int": _with(texts=[7, None, "x"]),
    "text_nan": b'{"schema": "m3w/1", "url": "u", "texts": [NaN], "images": [null]}',
    "image_string": _with(images=[None, "1.jpg", None]),
    "member_int": _image(member=1),
    "width_nan": _image(width=float("nan")),
    "width_str": _image(width="200"),
    "attach_other": _image(attach="sideways"),
    "p_next_nan": _with(p_next=float("nan")),
    "url_list": _with(url=["http://e/0"]),
    "both_null": _with(texts=[None], images=[None]),
    "stats_int": _with(stats=5),
    "lang_score_nan": _with(lang_score=float("nan")),
    "fetched_int": _with(fetched=3),
    "deep_json": b'{"schema": "m3w/1", "texts": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
}


def _shard(path, payloads: list[bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for i, payload in enumerate(payloads):
            info = tarfile.TarInfo(f"{i:032x}.json")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


@pytest.fixture(scope="module")
def tokenizer():
    docs = [synthetic.synthetic_document(i).text() for i in range(10)]
    return tiny.train_tokenizer(docs + ["alpha beta gamma delta epsilon zeta"], vocab_size=300)


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_record_is_counted_and_skipped_and_the_stream_goes_on(tmp_path, tokenizer, case):
    good = [json.dumps(_good(i)).encode() for i in (1, 2)]
    _shard(tmp_path / "000000.tar", [good[0], BAD[case], good[1]])
    cfg = data.DataConfig(
        shards=str(tmp_path), batch_size=1, seq_len=32, num_workers=1, shuffle_buffer=0
    )
    processor = tiny.tiny_image_processor(32)
    stream = data.ShardStream(
        cfg, tokenizer, data.make_image_transform(processor), (3, 32, 32), epochs=1
    )
    batches = list(stream)
    counts = data.Counts()
    for b in batches:
        counts.update(b["_counts"])
    assert len(batches) == 2  # both good records
    assert counts["data.bad_record"] == 1, dict(counts)
    assert counts["data.bad_json"] == 0


@pytest.mark.parametrize("case", sorted(set(BAD) - {"deep_json"}))
def test_document_from_json_refuses_the_same_records(case):
    from m3w_builder.document import RecordError, check_record

    record = json.loads(BAD[case])
    with pytest.raises(RecordError):
        Document.from_json(record)
    with pytest.raises(ValueError):  # RecordError is a ValueError: old callers keep working
        check_record(record)


def test_a_good_record_and_every_field_the_build_writes_pass():
    from m3w_builder.document import check_record

    doc = synthetic.synthetic_document(3)
    record = doc.to_json()
    assert check_record(record) is record
    assert Document.from_json(record).texts == doc.texts


@pytest.mark.parametrize("case", sorted(set(BAD) - {"deep_json", "json_list", "json_string"}))
def test_inspect_verify_reports_what_the_loader_refuses(case):
    """One schema check (m3w_builder.document.record_problems) for every reader: a record the
    loader and Document.from_json refuse is a finding of `m3w inspect verify` too (before issue 16
    verify had its own copy of the rules and passed e.g. `stats: 5` or a NaN lang_score)."""
    from pipelines.inspect.read import Sample
    from pipelines.inspect.verify import check_record as verify_record

    record = json.loads(BAD[case])
    sample = Sample(shard="s.tar", key="k", offset=0, record=record)
    codes = [code for code, _ in verify_record(sample)]
    assert any(code.startswith("schema.") for code in codes), (case, codes)
