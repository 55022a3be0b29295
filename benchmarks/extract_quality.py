"""Main-content extraction quality against ground truth: m3w's dom.extract vs trafilatura, same run.

Corpus: dev corpus html/readability (130 cases from mozilla/readability's test suite; `expected.html`
is the main content Readability.js extracts, images included; index.jsonl marks 37 synthetic cases).
Real captures and synthetic cases are reported separately.

Metrics, per system:
- text: bag-of-tokens precision / recall / F1 of the extracted text against expected.html's text
  (lower-cased word tokens; each CJK character is one token), averaged over pages (macro) — the
  measure of the ScrapingHub article-extraction benchmark and of trafilatura's own evaluation;
- images: unique image URLs, resolved against the page URL (`http://fakehost/test/page.html`, the
  URL Readability's test harness uses), matched against the `src` of expected.html's `<img>` or any
  of its `srcset` candidates (the same picture at another resolution); precision and recall summed
  over pages (micro).

m3w is run with --no-filter semantics (dom.extract only: the text filters are a separate stage).
trafilatura 2.x runs `extract(html, url=..., include_images=True, output_format="xml")` with defaults.
m3w's images are scored by all their candidate URLs (an image matches when any of its candidates
does); trafilatura gives one URL per image. The row "m3w, scored on its preferred URL only" scores
m3w's same output by its one preferred URL (`src`), the rule trafilatura is held to.
A further row, m3w with main-content focus off (the whole cleaned body, as Flamingo's M3W keeps it),
shows what the main-content step buys.

Usage: python benchmarks/extract_quality.py [--corpus DIR] [--cases N] [--worst K]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urldefrag, urljoin

from lxml import etree
from lxml import html as lhtml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from m3w_builder.config import DomConfig  # noqa: E402
from m3w_builder.dom import extract, srcset_candidates  # noqa: E402

PAGE_URL = "http://fakehost/test/page.html"
_TOKEN = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff]|[^\W_]+", re.U)


def tokens(text: str) -> Counter:
    return Counter(_TOKEN.findall(text.lower()))


def norm_url(url: str | None, base: str = PAGE_URL) -> str | None:
    if not url:
        return None
    url = url.strip()
    if url.startswith("data:"):
        return url
    try:
        return urldefrag(urljoin(base, url))[0]
    except ValueError:
        return None


@dataclass
class Truth:
    text: Counter
    images: list[set[str]]  # per ground-truth image: the URLs that count as it


def load_truth(path: Path) -> Truth:
    root = lhtml.fromstring(path.read_bytes().decode("utf-8", "replace") or "<div></div>")
    images: list[set[str]] = []
    seen: set[frozenset[str]] = set()
    for img in root.iter("img"):
        names = {norm_url(img.get("src"))}
        for attr in ("srcset", "data-srcset"):
            if img.get(attr):
                names |= {norm_url(u) for u, _ in srcset_candidates(img.get(attr))}
        names.discard(None)
        key = frozenset(names)
        if names and key not in seen:  # expected.html repeats some images; count each once
            seen.add(key)
            images.append(names)
    return Truth(tokens(" ".join(root.itertext())), images)


@dataclass
class Score:
    text_p: list[float] = field(default_factory=list)
    text_r: list[float] = field(default_factory=list)
    text_f: list[float] = field(default_factory=list)
    img_tp_pred: int = 0  # predicted images that match a truth image
    img_pred: int = 0
    img_tp_truth: int = 0  # truth images found
    img_truth: int = 0
    seconds: float = 0.0
    errors: int = 0

    def add(
        self, truth: Truth, text: str, images: list[str | list[str]]
    ) -> tuple[float, float, float]:
        """`images`: one entry per predicted image, a URL or the image's candidate URLs (the same
        picture at other resolutions or from a lazy attribute): it matches a truth image when any
        of its URLs does, as a truth image matches by its src or any srcset candidate."""
        got = tokens(text)
        overlap = sum((got & truth.text).values())
        p = overlap / sum(got.values()) if got else (1.0 if not truth.text else 0.0)
        r = overlap / sum(truth.text.values()) if truth.text else 1.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        self.text_p.append(p)
        self.text_r.append(r)
        self.text_f.append(f)
        pred: set[frozenset[str]] = set()
        for image in images:
            urls = frozenset(
                u for u in map(norm_url, [image] if isinstance(image, str) else image) if u
            )
            if urls:
                pred.add(urls)
        self.img_pred += len(pred)
        self.img_tp_pred += sum(1 for urls in pred if any(urls & t for t in truth.images))
        self.img_truth += len(truth.images)
        found = frozenset().union(*pred) if pred else frozenset()
        self.img_tp_truth += sum(1 for t in truth.images if t & found)
        return p, r, f

    def row(self) -> dict[str, float]:
        n = max(len(self.text_f), 1)
        return {
            "pages": len(self.text_f),
            "text_p": sum(self.text_p) / n,
            "text_r": sum(self.text_r) / n,
            "text_f1": sum(self.text_f) / n,
            "img_p": self.img_tp_pred / self.img_pred if self.img_pred else float("nan"),
            "img_r": self.img_tp_truth / self.img_truth if self.img_truth else float("nan"),
            "img_pred": self.img_pred,
            "img_truth": self.img_truth,
            "ms_per_page": 1000 * self.seconds / n,
            "errors": self.errors,
        }


def run_m3w(html: bytes, config: DomConfig) -> tuple[str, list[list[str]]]:
    doc = extract(html.decode("utf-8", "replace"), PAGE_URL, config)
    return doc.text("\n"), [n.candidates or [n.src] for n in doc.image_nodes]


def run_trafilatura(html: bytes) -> tuple[str, list[str]]:
    import trafilatura

    out = trafilatura.extract(
        html.decode("utf-8", "replace"),
        url=PAGE_URL,
        include_images=True,
        output_format="xml",
        with_metadata=False,
    )
    if not out:
        return "", []
    root = etree.fromstring(out.encode("utf-8"), etree.XMLParser(recover=True, huge_tree=True))
    if root is None:
        return "", []
    images = [g.get("src") for g in root.iter("graphic") if g.get("src")]
    return " ".join(root.itertext()), images


def run_m3w_one_url(html: bytes) -> tuple[str, list[str]]:
    """m3w scored like trafilatura: each image by its one preferred URL (`src`, = candidates[0])."""
    doc = extract(html.decode("utf-8", "replace"), PAGE_URL, DomConfig())
    return doc.text("\n"), [n.src for n in doc.image_nodes]


SYSTEMS = {
    "m3w dom.extract": lambda h: run_m3w(h, DomConfig()),
    "m3w, scored on its preferred URL only": run_m3w_one_url,
    "m3w, main-content off": lambda h: run_m3w(h, DomConfig(main_content=False)),
    "trafilatura 2 (baseline)": run_trafilatura,
}


def table(results: dict[str, dict[str, Score]]) -> str:
    head = (
        "| subset | system | pages | text P | text R | text F1 | img P | img R | "
        "imgs found/truth | ms/page |"
    )
    lines = [head, "|" + "---|" * 10]
    for subset, systems in results.items():
        for name, score in systems.items():
            r = score.row()
            lines.append(
                f"| {subset} | {name} | {r['pages']} | {r['text_p']:.3f} | {r['text_r']:.3f} | "
                f"{r['text_f1']:.3f} | {r['img_p']:.3f} | {r['img_r']:.3f} | "
                f"{r['img_pred']}/{r['img_truth']} | {r['ms_per_page']:.1f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(os.environ.get("M3W_DEV_CORPUS", REPO.parent / "shared" / "corpus" / "dev"))
    parser.add_argument("--corpus", type=Path, default=default)
    parser.add_argument("--cases", type=int, default=0, help="only the first N cases (0 = all)")
    parser.add_argument("--worst", type=int, default=8, help="list the K worst m3w pages")
    parser.add_argument("--json", type=Path, help="also write per-page scores here")
    args = parser.parse_args(argv)
    root = args.corpus / "html" / "readability"
    cases = [json.loads(line) for line in (root / "index.jsonl").read_text().splitlines()]
    if args.cases:
        cases = cases[: args.cases]
    results: dict[str, dict[str, Score]] = {
        "real": {n: Score() for n in SYSTEMS},
        "synthetic": {n: Score() for n in SYSTEMS},
    }
    per_page = []
    for case in cases:
        subset = "synthetic" if case["synthetic"] else "real"
        html = (root / case["source"]).read_bytes()
        truth = load_truth(root / case["expected"])
        row = {"id": case["id"], "subset": subset}
        for name, fn in SYSTEMS.items():
            score = results[subset][name]
            start = time.perf_counter()
            try:
                text, images = fn(html)
            except Exception as exc:  # noqa: BLE001 - a crash scores as an empty extraction
                print(f"{name} failed on {case['id']}: {exc!r}", file=sys.stderr)
                score.errors += 1
                text, images = "", []
            score.seconds += time.perf_counter() - start
            before = (score.img_tp_pred, score.img_pred, score.img_tp_truth)
            _, _, f = score.add(truth, text, images)
            row[name] = {
                "f1": round(f, 3),
                "img_tp": score.img_tp_pred - before[0],
                "img_pred": score.img_pred - before[1],
                "img_found": score.img_tp_truth - before[2],
                "img_truth": len(truth.images),
            }
        per_page.append(row)
    print(table(results))
    first = next(iter(SYSTEMS))
    worst = sorted((r for r in per_page if r["subset"] == "real"), key=lambda r: r[first]["f1"])[
        : args.worst
    ]
    print(f"\nworst real pages for {first} (F1, images matched/predicted, found/truth):")
    base = list(SYSTEMS)[-1]
    for r in worst:
        m, t = r[first], r[base]
        print(
            f"  {r['id']:<40} m3w F1 {m['f1']:.3f} img {m['img_tp']}/{m['img_pred']} "
            f"{m['img_found']}/{m['img_truth']}   trafilatura F1 {t['f1']:.3f}"
        )
    missed = sorted(
        (r for r in per_page if r["subset"] == "real"),
        key=lambda r: (r[first]["img_found"] - r[first]["img_truth"], -r[first]["img_pred"]),
    )[: args.worst]
    print("\nreal pages with most missed / extra images (m3w):")
    for r in missed:
        m = r[first]
        print(
            f"  {r['id']:<40} found {m['img_found']}/{m['img_truth']}, "
            f"correct {m['img_tp']}/{m['img_pred']}"
        )
    print(
        f"\nmachine: {platform.machine()} {platform.processor() or ''} "
        f"{os.cpu_count()} cpus, python {platform.python_version()}, "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
    )
    if args.json:
        args.json.write_text(json.dumps(per_page, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
