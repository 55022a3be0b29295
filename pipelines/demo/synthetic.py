"""Synthetic shards, written with the real ShardWriter: one home for what tests, benchmarks and the
demo's trainer checks write when they need shards without running a build.

- `synthetic_document` / `write_synthetic_shards`: pages whose sentences name the colour and shape
  of the picture beside them (the trainer's and eval's tests, benchmarks/train_throughput.py);
- `make_job`: a whole job folder (shards, manifest.jsonl, report.json) of multilingual pages with
  pictures of several formats and sizes, seeded, for the inspect commands' tests; `rewrite_shard`
  breaks a shard on purpose; `build_sample_job` runs the real build on the generated sample site.

Both go through `write_shards`, so every synthetic shard is named, filled and closed the same way.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

from m3w_builder.document import SCHEMA, Document, ImageNode, TextNode
from m3w_builder.shards import ShardInfo, ShardWriter


def write_shards(
    directory: Path,
    docs: Iterable[Document],
    shards: int,
    docs_per_shard: int,
    schema: str = SCHEMA,
    written: list[Document] | None = None,
) -> Iterator[tuple[Path, ShardInfo]]:
    """`shards` shards `{directory}/{000000..}.tar` of `docs_per_shard` documents each, taken in
    order from `docs`; yields each shard's path and info as it is closed (a failed write leaves
    no partial shard). `written` collects the documents in shard order."""
    docs = iter(docs)
    for s in range(shards):
        path = directory / f"{s:06d}.tar"
        writer = ShardWriter(path, schema)
        try:
            for _ in range(docs_per_shard):
                doc = next(docs)
                writer.write(doc)
                if written is not None:
                    written.append(doc)
        except BaseException:
            writer.abort()
            raise
        yield path, writer.close()


# ---------------------------------------------------------------------------------------------
# pages that name their pictures (training tests)
# ---------------------------------------------------------------------------------------------

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 60),
    "blue": (40, 60, 220),
    "yellow": (235, 215, 40),
    "purple": (140, 40, 170),
    "orange": (245, 140, 20),
}
SHAPES = ("circle", "square", "triangle")
WORDS = (
    "the garden path leads past old stone walls where people walk every morning and evening "
    "a small shop sells bread fruit and coffee near the station while trains arrive on time "
    "visitors often stop to read the signs about local history and the river that runs beside"
).split()


def draw_shape(colour: str, shape: str, size: int = 96, seed: int = 0) -> bytes:
    """A JPEG of one coloured shape on a light background (varied by seed)."""
    rng = random.Random(seed)
    bg = tuple(rng.randint(225, 255) for _ in range(3))
    im = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(im)
    m = rng.randint(8, 20)
    box = (m, m, size - m, size - m)
    fill = COLOURS[colour]
    if shape == "circle":
        d.ellipse(box, fill=fill)
    elif shape == "square":
        d.rectangle(box, fill=fill)
    else:
        d.polygon([(size // 2, m), (m, size - m), (size - m, size - m)], fill=fill)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def synthetic_document(index: int, seed: int = 0, *, max_images: int = 3) -> Document:
    """A page of 1-`max_images` images, each followed by a sentence naming its colour and shape."""
    rng = random.Random(f"{seed}/{index}")
    doc = Document(url=f"http://synthetic.test/{seed}/{index}")
    doc.nodes.append(TextNode(" ".join(rng.choices(WORDS, k=rng.randint(6, 20)))))
    for j in range(rng.randint(1, max_images)):
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        data = draw_shape(colour, shape, seed=rng.randint(0, 10**9))
        attach = "following" if rng.random() < 0.5 else "preceding"
        doc.nodes.append(
            ImageNode(
                src=f"/img/{index}/{j}.jpg",
                width=96,
                height=96,
                data=data,
                ext="jpg",
                attach=attach,
            )
        )
        filler = " ".join(rng.choices(WORDS, k=rng.randint(3, 12)))
        doc.nodes.append(TextNode(f"a {colour} {shape}. {filler}"))
    return doc


def write_synthetic_shards(
    out_dir: str | Path,
    *,
    shards: int = 4,
    docs_per_shard: int = 8,
    seed: int = 0,
    max_images: int = 3,
) -> list[ShardInfo]:
    """`shards` tar shards `{000000..}.tar` of synthetic documents under `out_dir`."""
    docs = (
        synthetic_document(s * docs_per_shard + i, seed, max_images=max_images)
        for s in range(shards)
        for i in range(docs_per_shard)
    )
    return [info for _, info in write_shards(Path(out_dir), docs, shards, docs_per_shard)]


# ---------------------------------------------------------------------------------------------
# job folders for the inspect commands
# ---------------------------------------------------------------------------------------------

LABEL_WORDS = {
    "en": "the quick brown fox jumps over a lazy dog while river light falls on stone and garden".split(),
    "fr": "le chat noir dort sur la table pendant que la pluie tombe sur le jardin et la ville".split(),
    "de": "der alte baum steht am fluss und die kinder spielen im garten bei sonne und wind".split(),
}
PALETTE = ["#d1495b", "#edae49", "#00798c", "#30638e", "#003d5b", "#66a182", "#8d96a3"]
FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}


def draw_labelled_image(rng: random.Random, width: int, height: int, ext: str, label: str) -> bytes:
    """A picture with a background, a few shapes and `label` written on it, encoded as `ext`."""
    img = Image.new("RGB", (width, height), rng.choice(PALETTE))
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1, y1 = x0 + rng.randrange(8, width // 2 + 9), y0 + rng.randrange(8, height // 2 + 9)
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0, y0, x1, y1), fill=rng.choice(PALETTE), outline="white")
    draw.text((6, 6), label, fill="white")
    buf = io.BytesIO()
    img.save(buf, format=FORMATS[ext], quality=85)
    return buf.getvalue()


def make_document(rng: random.Random, url: str, n_images: int, text_words: int = 40) -> Document:
    """Text and images alternating in reading order; attachment drawn once per page (DESIGN §4)."""
    lang = rng.choice(sorted(LABEL_WORDS))
    attach = "following" if rng.random() < 0.5 else "preceding"
    nodes: list[TextNode | ImageNode] = []

    def text() -> TextNode:
        n = rng.randrange(max(1, text_words // 2), text_words + 1)
        words = [rng.choice(LABEL_WORDS[lang]) for _ in range(n)]
        return TextNode(" ".join(words).capitalize() + ".")

    nodes.append(text())
    for i in range(n_images):
        width, height = rng.randrange(64, 320), rng.randrange(64, 240)
        ext = rng.choice(sorted(FORMATS))
        data = draw_labelled_image(rng, width, height, ext, f"img {i} {attach[:4]}")
        nodes.append(
            ImageNode(
                src=f"{url}/img{i}.{ext}",
                alt=f"picture {i} of {url.rsplit('/', 1)[-1]}",
                width=width,
                height=height,
                data=data,
                ext=ext,
                sha256=hashlib.sha256(data).hexdigest(),
                attach=attach,
            )
        )
        nodes.append(text())
    return Document(
        url=url,
        nodes=nodes,
        source_file="synthetic.warc.gz",
        source_offset=rng.randrange(1 << 20),
        fetched="2026-11-25T00:00:00Z",
        lang=lang,
        lang_score=round(rng.uniform(0.6, 1.0), 3),
        p_next=0.5,
        stats={"words": sum(len(t.split()) for t in Document(url=url, nodes=nodes).texts if t)},
    )


@dataclass(slots=True)
class Job:
    """What was generated: the job dir, and each document in shard order (for exact assertions)."""

    root: Path
    shards: list[Path] = field(default_factory=list)
    docs: list[Document] = field(default_factory=list)
    shard_of: dict[str, str] = field(default_factory=dict)  # key → shard name
    reasons: dict[str, int] = field(default_factory=dict)


def make_job(
    root: str | Path,
    n_shards: int = 2,
    docs_per_shard: int = 4,
    max_images: int = 3,
    seed: int = 0,
    text_words: int = 40,
    schema: str = "m3w/2",
) -> Job:
    """Write `root/shards/NNNNNN.tar`, `root/manifest.jsonl` and `root/report.json` (DESIGN §3), in
    the writer's schema (m3w/2) or the older m3w/1 layout that readers still accept."""
    rng = random.Random(seed)
    root = Path(root)
    job = Job(root=root)
    docs = (
        make_document(
            rng, f"https://example.org/s{s}/page{d}", rng.randrange(1, max_images + 1), text_words
        )
        for s in range(n_shards)
        for d in range(docs_per_shard)
    )
    manifest = []
    for path, info in write_shards(
        root / "shards", docs, n_shards, docs_per_shard, schema, job.docs
    ):
        manifest.append(info.to_json())
        job.shards.append(path)
    for i, doc in enumerate(job.docs):
        job.shard_of[doc.key] = job.shards[i // docs_per_shard].name
    (root / "manifest.jsonl").write_text("".join(json.dumps(m) + "\n" for m in manifest))
    job.reasons = {"html.too_large": 3, "text.stopword_ratio": 11, "image.too_small": 7}
    report = {
        "docs": len(job.docs),
        "images": sum(len(d.image_nodes) for d in job.docs),
        "reasons": job.reasons,
        "languages": {},
    }
    (root / "report.json").write_text(json.dumps(report, indent=1))
    return job


def rewrite_shard(path: Path, edit: Callable[[str, bytes], list[tuple[str, bytes]]]) -> None:
    """Re-tar `path` member by member through `edit(name, data) -> [(name, data), ...]`: the tool for
    hand-breaking a shard (drop, rename, replace or add members) while keeping a valid tar."""
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as out:
        for name, data in members:
            for new_name, new_data in edit(name, data):
                info = tarfile.TarInfo(new_name)
                info.size = len(new_data)
                out.addfile(info, io.BytesIO(new_data))
    Path(path).write_bytes(buf.getvalue())


def build_sample_job(root: str | Path, pages: int = 12) -> tuple[Path, dict]:
    """A job made by the real build (`pipelines.build.job.run_build`, in-process executor) from the
    generated sample site served on 127.0.0.1: real extraction, filters, fetching, dedup, attachment
    and shard writing. Returns (job dir, the build's report)."""
    from m3w_builder.config import BuildConfig
    from pipelines.build.job import JobOptions, run_build
    from pipelines.demo.sample_site import make_site, serve_site, write_url_list

    root = Path(root)
    make_site(root / "site", pages=pages, seed=0)
    with serve_site(root / "site") as base:
        urls = write_url_list(root / "site", base, root / "urls.txt")
        config = BuildConfig.for_profile("m3w")
        config.fetch.allow_private_hosts = True  # the site is on 127.0.0.1
        config.shards.docs_per_shard = 4
        options = JobOptions(out=str(root / "job"), urls_per_unit=4, progress=False)
        report = run_build([str(urls)], config, options, use_ray=False)
    return root / "job", report
