"""Near-duplicate documents removed job-wide (issue "Scale" §2): MinHash signatures in the extract
tasks, LSH band partitions, confirmed pairs, clusters with one survivor — measured against exact
Jaccard similarity on generated near-copies, and a build whose output does not depend on the number
of partitions."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from m3w_builder import minhash
from m3w_builder.config import BuildConfig
from m3w_builder.dedup import UnionFind
from m3w_builder.document import Document, TextNode
from pipelines.build import decide as dec
from pipelines.build import tables
from pipelines.build.job import JobOptions, near_config, run_build

_VOCAB = [f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe", "ro", "si", "ta", "vu", "ze")
          for b in ("da", "fe", "gi", "ho", "ju", "ky", "la", "mo", "ne", "po", "qu", "ri")]  # fmt: skip


def _paragraph(rng: random.Random, words: int = 60) -> str:
    return " ".join(rng.choice(_VOCAB) + rng.choice(("", "s", "n")) for _ in range(words)) + "."


def _families(seed: int = 0, bases: int = 40) -> list[tuple[str, list[str]]]:
    """(family, texts): a base article, near copies (an edited date line, another footer, one
    paragraph more), and a related article sharing only some paragraphs with it."""
    rng = random.Random(seed)
    out = []
    for b in range(bases):
        paras = [_paragraph(rng) for _ in range(8)]
        base = paras + [f"Published on day {b}.", "Footer: all rights reserved."]
        copies = [
            paras + [f"Published on day {b + 1000}.", "Footer: all rights reserved."],
            paras + [f"Published on day {b}.", "Footer: contact us at the desk."],
            paras[:4] + [_paragraph(rng)] + paras[4:] + [f"Published on day {b}."],
        ]
        related = paras[:3] + [_paragraph(rng) for _ in range(5)]
        for i, text in enumerate([base, *copies]):
            out.append((f"f{b}", ["\n".join(text)], i))
        out.append((f"r{b}", ["\n".join(related)], 0))
    return [(fam, texts[0]) for fam, texts, _ in out]


def _run_decide(work: Path, texts: list[str], parts: int, per_unit: int = 17) -> set[int]:
    """The decide stage's near-dup steps over `texts` spread across units; returns the dropped
    document numbers and leaves the confirmed pairs on disk."""
    config = BuildConfig()
    near = near_config(config)
    units = [texts[i : i + per_unit] for i in range(0, len(texts), per_unit)]
    for u, chunk in enumerate(units):
        keys = dec.UnitKeys(near)
        for j, text in enumerate(chunk):
            doc = Document(f"https://site{u}.example/{j}", [TextNode(text)])
            doc.fetched = f"2024-01-{1 + (u * per_unit + j) % 28:02d}T00:00:00Z"
            keys.add(doc)
        keys.write(work, u, parts)
    for p in range(parts):  # the exact rules first (none fire here: every URL and text differs)
        dec.page_partition(p, work, list(range(len(units))), parts)
    for q in range(parts):
        dec.content_partition(q, work, parts)
    for p in range(parts):
        dec.band_partition(p, work, list(range(len(units))), near)
    dec.cluster(work, parts)
    drops = tables.load_npy(dec.decide_path(work, "near.drops.npy"), mmap=False)
    return {int(u) * per_unit + int(o) for u, o in zip(drops["unit"], drops["ord"], strict=True)}


def _components(work: Path, parts: int, per_unit: int = 17) -> UnionFind:
    uf = UnionFind()
    for p in range(parts):
        pairs = tables.load_npy(dec.decide_path(work, f"bands-{p:05d}.pairs.npy"), mmap=False)
        for u1, o1, u2, o2 in pairs.tolist():
            uf.union(u1 * per_unit + o1, u2 * per_unit + o2)
    return uf


@pytest.mark.slow
def test_near_copies_are_removed_and_different_documents_are_not(tmp_path: Path):
    docs = _families()
    texts = [t for _, t in docs]
    dropped = _run_decide(tmp_path, texts, parts=3)
    uf = _components(tmp_path, 3)
    high = low = high_removed = low_removed = 0
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            if docs[i][0][1:] != docs[j][0][1:]:
                continue  # other bases: unrelated texts (J ≈ 0), checked below in bulk
            jac = minhash.jaccard(texts[i], texts[j])
            merged = (i in dropped or j in dropped) and uf.find(i) == uf.find(j)
            if jac >= 0.85:
                high, high_removed = high + 1, high_removed + merged
            elif jac < 0.6:
                low, low_removed = low + 1, low_removed + merged
    assert high >= 80 and low >= 100  # the generator made both kinds
    assert high_removed >= 0.95 * high, (high_removed, high)
    assert low_removed <= 0.01 * low, (low_removed, low)
    # one survivor per cluster: every cluster of the near copies keeps exactly one document
    for members in uf.components().values():
        assert sum(m not in dropped for m in members) == 1


def test_the_decision_does_not_depend_on_partitions_or_unit_sizes(tmp_path: Path):
    texts = [t for _, t in _families(seed=3, bases=12)]
    one = _run_decide(tmp_path / "a", texts, parts=1)
    many = _run_decide(tmp_path / "b", texts, parts=4)
    assert one == many and one


def test_curve_of_the_default_settings():
    """The documented S-curve: P(removed | J) for the default bands × rows and threshold."""
    from math import comb

    near = near_config(BuildConfig())

    def p_removed(j: float) -> float:
        cand = 1 - (1 - j**near.rows) ** near.bands
        k = near.num_perm
        need = int(np.ceil(near.threshold * k))
        confirm = sum(comb(k, i) * j**i * (1 - j) ** (k - i) for i in range(need, k + 1))
        return cand * confirm

    assert p_removed(0.85) >= 0.97 and p_removed(0.9) >= 0.999
    assert p_removed(0.6) <= 1e-4 and p_removed(0.5) <= 1e-7


def _page(text: str) -> bytes:
    body = "".join(f"<p>{p}</p>" for p in text.split("\n"))
    return f"<html><body>{body}<img src='/a.jpg'></body></html>".encode()


@pytest.mark.slow
def test_a_build_removes_near_copies_the_same_way_with_any_partitions(tmp_path: Path):
    from httpserver import drawn_image

    from pipelines.demo.crawl_archive import CrawlArchive

    docs = _families(seed=5, bases=6)
    with CrawlArchive(tmp_path / "a.warc.gz") as warc:
        for i, (_, text) in enumerate(docs):
            body = _page(text).replace(b"/a.jpg", f"/img/{i}.jpg".encode())
            warc.response(f"http://s{i}.example/page.html", body, "text/html")
            warc.response(
                f"http://s{i}.example/img/{i}.jpg", drawn_image(160, 120, seed=i), "image/jpeg"
            )
    config = BuildConfig.for_profile("m3w")
    config.fetch.offline = True
    reports, manifests = [], []
    for parts in (1, 3):
        out = tmp_path / f"job{parts}"
        options = JobOptions(out=str(out), progress=False, partitions=parts)
        reports.append(run_build([str(tmp_path / "a.warc.gz")], config, options, use_ray=False))
        manifests.append((out / "manifest.jsonl").read_text())
    assert manifests[0] == manifests[1]  # byte-identical shards
    report = reports[0]
    # each base family of 4 near copies keeps one: 3 removed per family
    assert report["counts"]["dedup.near_duplicate"] == 3 * 6
    assert report["near_duplicates"]["sizes"] == {"4-7": 6}  # six clusters of four
    assert report["documents"] == 6 + 6  # a survivor per family, and each related article
    again = run_build(
        [str(tmp_path / "a.warc.gz")], config,
        JobOptions(out=str(tmp_path / "job1"), progress=False, partitions=1), use_ray=False,
    )  # fmt: skip
    assert again["documents"] == report["documents"]  # a rerun reads the decisions back
    assert json.loads((tmp_path / "job1" / "report.json").read_text())["documents"] == 12
