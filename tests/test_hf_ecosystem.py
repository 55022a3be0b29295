"""The shards and the export in the ecosystem users reach for (issue "Fit the ecosystem" §1):
Hugging Face `datasets` (webdataset over the shards, parquet and json over the export, the
folder itself through its dataset card) and Ray Data's `read_webdataset`, all real libraries."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from pipelines.demo.synthetic import make_job

datasets = pytest.importorskip("datasets")
pq = pytest.importorskip("pyarrow.parquet")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _offline_hf(tmp_path, monkeypatch):
    """Never the Hub: a private cache and offline mode (load_dataset works on local files)."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    # 2 shards × 7 documents: more than the 5 samples `datasets` infers its schema from
    return make_job(tmp_path_factory.mktemp("job"), n_shards=2, docs_per_shard=7, seed=3)


def _vary(job) -> None:
    """Nothing the writer guarantees may depend on the first five samples looking alike: the
    generated docs already differ in image counts, formats, languages and texts."""
    counts = {len(d.image_nodes) for d in job.docs}
    assert len(counts) > 1


def test_load_dataset_webdataset_over_the_shards(job, tmp_path):
    _vary(job)
    files = sorted(str(p) for p in job.shards)
    ds = datasets.load_dataset(
        "webdataset", data_files={"train": files}, split="train", cache_dir=str(tmp_path / "c")
    )
    assert len(ds) == len(job.docs)
    assert set(ds.column_names) == {"json", "images.mp", "__key__", "__url__"}
    for row, doc in zip(ds, job.docs):
        record = row["json"]
        assert record["schema"] == "m3w/2" and record["url"] == doc.url
        assert record["texts"] == doc.texts
        blobs = row["images.mp"]
        assert [b for b in blobs if b is not None] == [n.data for n in doc.image_nodes]
        assert json.loads(record["stats"]) == doc.stats
    # the images cast to the Image feature and decode to PIL
    cast = ds.cast_column("images.mp", datasets.List(datasets.Image()))
    first = [im for im in cast[0]["images.mp"] if im is not None]
    assert first and all(isinstance(im, Image.Image) for im in first)
    assert first[0].size == (job.docs[0].image_nodes[0].width, job.docs[0].image_nodes[0].height)


def test_load_dataset_webdataset_streaming(job, tmp_path):
    files = sorted(str(p) for p in job.shards)
    ds = datasets.load_dataset(
        "webdataset", data_files={"train": files}, split="train", streaming=True
    )
    urls = [row["json"]["url"] for row in ds]
    assert urls == [d.url for d in job.docs]


def test_m3w_1_shards_are_what_datasets_cannot_read(tmp_path):
    """Why m3w/2 exists (docs/format.md): the old one-member-per-image layout fails inference."""
    old = make_job(tmp_path / "old", n_shards=1, docs_per_shard=7, seed=3, schema="m3w/1")
    with pytest.raises(ValueError, match="same prefix or the same types"):
        datasets.load_dataset(
            "webdataset", data_files={"train": [str(old.shards[0])]}, split="train",
            cache_dir=str(tmp_path / "c"),
        )  # fmt: skip


def _export(job, out: Path, fmt: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "export", str(job.root), str(out), "--format", fmt,
         "--rows-per-group", "3"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip


@pytest.mark.slow
def test_export_parquet_loads_with_datasets_and_decodes_images(job, tmp_path):
    out = tmp_path / "export"
    result = _export(job, out, "parquet")
    assert result.returncode == 0, result.stderr
    assert f"exported {len(job.docs)} documents" in result.stdout
    files = sorted((out / "data").glob("*.parquet"))
    assert [f.name for f in files] == [
        "train-00000-of-00002.parquet",
        "train-00001-of-00002.parquet",
    ]
    meta = pq.ParquetFile(files[0]).metadata
    assert meta.num_rows == 7 and meta.num_row_groups == 3  # 3 + 3 + 1: streaming-sized groups
    by_files = datasets.load_dataset(
        "parquet", data_files={"train": [str(f) for f in files]}, split="train",
        cache_dir=str(tmp_path / "c1"),
    )  # fmt: skip
    by_folder = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "c2"))
    for ds in (by_files, by_folder):
        assert len(ds) == len(job.docs)
        assert isinstance(ds.features["images"], datasets.List)
        assert isinstance(ds.features["images"].feature, datasets.Image)
        assert set(ds.column_names) == {"texts", "images", "attach", "metadata", "general_metadata"}
    for row, doc in zip(by_folder, job.docs):
        assert row["texts"] == doc.texts
        images = row["images"]
        assert [im is None for im in images] == [t is not None for t in doc.texts]
        pics = [im for im in images if im is not None]
        assert all(isinstance(im, Image.Image) for im in pics)
        assert [p.size for p in pics] == [(n.width, n.height) for n in doc.image_nodes]
        assert [a for a in row["attach"] if a] == [n.attach for n in doc.image_nodes]
        general = json.loads(row["general_metadata"])
        assert general["url"] == doc.url and general["key"] == doc.key
        meta_list = json.loads(row["metadata"])
        assert [m["sha256"] for m in meta_list if m] == [n.sha256 for n in doc.image_nodes]
    card = (out / "README.md").read_text()
    assert card.startswith("---\nconfigs:") and "## Features" in card and "## Build report" in card


@pytest.mark.slow
def test_export_jsonl_has_urls_and_no_bytes(job, tmp_path):
    out = tmp_path / "export"
    result = _export(job, out, "jsonl")
    assert result.returncode == 0, result.stderr
    files = sorted((out / "data").glob("*.jsonl"))
    rows = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert [r["texts"] for r in rows] == [d.texts for d in job.docs]
    assert [[u for u in r["images"] if u] for r in rows] == [
        [n.src for n in d.image_nodes] for d in job.docs
    ]
    assert sum(f.stat().st_size for f in files) < sum(
        len(n.data) for d in job.docs for n in d.image_nodes
    )
    ds = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "c"))
    assert len(ds) == len(job.docs) and ds.features["images"].feature.dtype == "string"


@pytest.mark.slow
def test_export_refuses_a_folder_that_is_not_empty(job, tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "something").write_text("x")
    result = _export(job, out, "parquet")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "is not empty" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_export_reads_m3w_1_jobs_too(tmp_path):
    old = make_job(tmp_path / "old", n_shards=1, docs_per_shard=3, seed=5, schema="m3w/1")
    out = tmp_path / "export"
    assert _export(old, out, "parquet").returncode == 0
    ds = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "c"))
    assert [r["texts"] for r in ds] == [d.texts for d in old.docs]


@pytest.mark.slow
def test_ray_data_read_webdataset_over_the_shards(job):
    """Users post-process with Ray Data on the same cluster: read_webdataset decodes the record
    (.json) and the images member (.mp, msgpack) of every sample."""
    import ray

    from pipelines.build.ray_local import init_ray

    owns = init_ray(num_cpus=2, loopback_only=True)
    try:
        ds = ray.data.read_webdataset([str(p) for p in job.shards])
        rows = sorted(ds.take_all(), key=lambda r: [d.key for d in job.docs].index(r["__key__"]))
    finally:
        if owns:
            ray.shutdown()
    assert len(rows) == len(job.docs)
    for row, doc in zip(rows, job.docs):
        assert row["json"]["url"] == doc.url and list(row["json"]["texts"]) == doc.texts
        blobs = [b for b in row["images.mp"] if b is not None]
        assert [Image.open(io.BytesIO(b)).size for b in blobs] == [
            (n.width, n.height) for n in doc.image_nodes
        ]
    assert os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") is None  # restored after start
