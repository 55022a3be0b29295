"""BuildConfig: one typed tree holding every threshold of the build, loadable from YAML.

Each section belongs to one stage (sources, dom, text filters, images, fetch, dedup, shards, attach). Each
default names its source. Two profiles exist: `m3w` (Flamingo's M3W / Gopher rules, DESIGN §2) and
`obelics` (OBELICS's published thresholds, Laurençon et al. 2023, appendix A). A YAML file overrides any
field of the chosen profile: `{images: {min_side: 100}, shards: {docs_per_shard: 500}}`.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m3w_builder.settings import apply_assignment, apply_mapping

logger = logging.getLogger(__name__)

PROFILES = ("m3w", "obelics")


@dataclass
class SourceConfig:
    """Bounds on what a reader hands to the parser (DESIGN §7 'Bounded')."""

    max_html_bytes: int = 5_000_000  # 5 MB: 3× the largest real page in the dev corpus (1.6 MB)
    parse_timeout_s: float = 10.0  # a page that takes longer is skipped as html.parse_timeout
    max_depth: int = (
        2_000  # deeper DOMs are skipped as html.too_deep (lxml itself caps at 255 by default)
    )


@dataclass
class DomConfig:
    """DOM → Document rules (m3w_builder/dom/)."""

    min_data_uri_bytes: int = 1_000  # data: URIs shorter than this are spacers/pixels, not content
    # Main-content focus (Readability.js-style container scoring). Off keeps the whole cleaned body,
    # as Flamingo's M3W simplified DOM does.
    main_content: bool = True
    # The selected container must hold this fraction of the body's text (or ≥ 500 chars), else the
    # whole body is kept: a winner that small means the page is not an article.
    main_min_fraction: float = 0.25
    # Paragraphs whose characters are more than this fraction link text are menus / tag clouds /
    # "related" lists (Readability.js and trafilatura both drop link-dense blocks at about 0.5).
    max_link_density: float = 0.5
    # A chrome-looking container (nav/header/form/aside, "sidebar"/"header" class...) holding at
    # least this fraction of the page's text is kept: chrome is never most of a page, while ASP.NET
    # wraps whole pages in <form> and themes give article wrappers names like "sidebar-right-mix".
    spare_text_fraction: float = 0.4
    # Substrings of an image URL (lower-cased path, host) that mark it as chrome, not content.
    url_block_rules: list[str] = field(
        default_factory=lambda: [
            "logo",
            "icon",
            "button",
            "sprite",
            "avatar",
            "banner",
            "badge",
            "spacer",
            "pixel",
            "tracking",
            "doubleclick.net",
            "googlesyndication.com",
            "adservice",
            "/ads/",
            "/ad/",
            "facebook.com/tr",
            "gravatar.com",
            "emoji",
            "smilies",
        ]
    )


@dataclass
class TextFilterConfig:
    """Paragraph- then document-level text rules (textfilters.py). Defaults: the m3w profile.

    Flamingo builds M3W with "the text quality filters of MassiveWeb" (Alayrac et al. 2022, App. A.3.1),
    i.e. Gopher's rules (Rae et al. 2021, App. A.1.1 and Table A1), which are document-level only. The
    `obelics` profile adds OBELICS's paragraph ("node") and document rules with the cutoffs of its
    released filtering config (Laurençon et al. 2023, App. A.2; huggingface/OBELICS
    configs/config_filter_web_documents.yaml). A ratio threshold at its neutral value (max 1.0,
    min 0.0) switches the rule off, and the rule is then not even computed.
    Words: whitespace tokens, lower-cased, with leading/trailing non-letters stripped (OBELICS
    `get_words_from_text`); every CJK ideograph/kana counts as one word, because Chinese and Japanese
    are written without spaces (docs/textfilters.md).
    """

    # --- paragraph level (each failing paragraph is removed and its code appended to doc.drops) ---
    para_min_words: int = 1  # m3w: keep any paragraph with a word; OBELICS: 4
    para_max_words: int = 100_000  # Gopher's document cap; OBELICS: 1,000
    para_min_stopword_ratio: float = 0.0  # OBELICS: 0.3 (off in m3w: Gopher judges whole documents)
    para_max_special_char_ratio: float = 1.0  # OBELICS: 0.3
    para_char_rep_n: int = 10  # OBELICS character_repetition_length_node_level
    para_max_char_rep_ratio: float = 1.0  # OBELICS: 0.1
    para_word_rep_n: int = 5  # OBELICS word_repetition_length_node_level
    para_max_word_rep_ratio: float = 1.0  # OBELICS: 0.1
    para_max_flagged_ratio: float = 1.0  # OBELICS: 0.01 (needs flagged_words_file)
    para_min_punct_ratio: float = 0.0  # OBELICS: 0.001
    para_punct_min_words: int = 12  # OBELICS: shorter paragraphs are not judged on punctuation
    # --- document level (Gopher, Rae et al. 2021, App. A.1.1, unless said otherwise) ---
    doc_min_words: int = 50  # Gopher: 50-100,000 words; OBELICS: 10-2,000
    doc_max_words: int = 100_000
    doc_min_mean_word_len: float = 3.0  # Gopher: mean word length 3-10 characters (not for CJK)
    doc_max_mean_word_len: float = 10.0
    doc_max_symbol_word_ratio: float = 0.1  # Gopher: '#' or ellipsis per word > 0.1
    doc_max_bullet_para_frac: float = 0.9  # Gopher: > 90% of lines starting with a bullet
    doc_max_ellipsis_para_frac: float = 0.3  # Gopher: > 30% of lines ending with an ellipsis
    doc_min_alpha_word_ratio: float = 0.8  # Gopher: < 80% of words with an alphabetic character
    doc_min_stopwords: int = 2  # Gopher: fewer than 2 of the, be, to, of, and, that, have, with
    doc_min_stopword_ratio: float = 0.0  # OBELICS: 0.35
    doc_max_special_char_ratio: float = 1.0  # OBELICS: 0.275
    # Gopher Table A1: duplicate paragraph fraction 0.30, duplicate paragraph character fraction 0.20
    doc_max_dup_para_frac: float = 0.30
    doc_max_dup_para_char_frac: float = 0.20
    # Gopher Table A1: most frequent word n-gram's share of characters, n = 2, 3, 4
    doc_max_top_ngram_char_frac: dict[int, float] = field(
        default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16}
    )
    # Gopher Table A1: share of characters inside duplicated word n-grams, n = 5..10
    doc_max_dup_ngram_char_frac: dict[int, float] = field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    )
    doc_char_rep_n: int = 10  # OBELICS character_repetition_length_doc_level
    doc_max_char_rep_ratio: float = 1.0  # OBELICS: 0.1
    doc_word_rep_n: int = 5  # OBELICS word_repetition_length_doc_level
    doc_max_word_rep_ratio: float = 1.0  # OBELICS: 0.2
    doc_max_flagged_ratio: float = 0.01  # OBELICS's cutoff; only active with flagged_words_file
    doc_min_punct_ratio: float = 0.0  # OBELICS: 0.03 (punctuation marks / words-and-marks)
    # C4 (Raffel et al. 2020, §2.2) keeps only lines ending in terminal punctuation; as a per-line
    # rule that deletes every image caption, so here it is a document-level fraction, off by default.
    doc_min_punct_end_ratio: float = 0.0
    # CJK text has no spaces, so its "words" are characters; a Chinese/Japanese word averages about
    # two characters, so word n-gram rules (repetition, Gopher n-grams) read character n-grams with
    # n times this scale. Tuned on the dev corpus's Japanese pages (docs/textfilters.md).
    cjk_ngram_scale: int = 2
    flagged_words_file: str | None = None  # user-supplied list, one word per line; none is shipped
    languages: list[str] | None = None  # keep only these ISO 639-1 codes; None keeps all
    min_lang_score: float = 0.0  # OBELICS: 0.8 (fastText score); ours is the detector's probability
    # language id reads this many characters: 100% on the dev corpus, 2.2x faster than 5,000
    # (benchmarks/results/langid.md)
    lang_max_chars: int = 2_000

    def __post_init__(self) -> None:
        names = ("para_char_rep_n", "para_word_rep_n", "doc_char_rep_n", "doc_word_rep_n")
        for name in (*names, "cjk_ngram_scale"):
            if getattr(self, name) < 1:
                raise ValueError(f"text.{name} must be >= 1")


@dataclass
class ImageConfig:
    """Decode guards, filters and re-encoding (images.py)."""

    min_side: int = 64  # Flamingo M3W: images smaller than 64 px on a side are dropped
    max_side: int = 100_000
    max_aspect: float = 3.0  # Flamingo M3W: aspect ratio > 3 dropped
    formats: list[str] | None = None  # allowed source formats; None = anything Pillow decodes
    max_bytes: int = 10_000_000
    max_pixels: int = 89_478_485  # Pillow's own MAX_IMAGE_PIXELS; never raised process-wide
    uniform_std_max: float = 2.0  # per-channel std below this = single-coloured / nearly uniform
    store_format: str = "jpeg"  # "jpeg" | "webp"
    store_quality: int = 90
    store_max_side: int = 1024
    min_images_per_doc: int = 1  # Flamingo drops documents left with no image
    # At most this many images per document, the first in reading order: the DOM walk keeps this
    # many candidates (image.too_many after), so a page of 10,000 thumbnails never fetches them all.
    max_images_per_doc: int = 100
    decode_workers: int = 0  # decode/re-encode threads (Pillow releases the GIL); 0 = CPU count
    # Store an upright RGB JPEG within store_max_side as its own bytes minus metadata (EXIF/XMP/ICC/
    # COM) instead of re-encoding it: no generational loss, ~2× faster (benchmarks/image_fetch.py).
    # Off by default: issue 3 asks for every image re-encoded at store_quality.
    jpeg_passthrough: bool = False


@dataclass
class FetchConfig:
    """The async HTTP fetcher (images.py, and pages from URL lists)."""

    concurrency: int = 256
    per_host_concurrency: int = 16
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 10.0
    total_timeout_s: float = 30.0
    retries: int = 2
    backoff_s: float = 0.5
    max_redirects: int = 5
    max_response_bytes: int = 10_000_000
    user_agent: str = "m3w-builder/0.1 (+https://github.com/m3w/m3w)"
    allow_private_hosts: bool = False  # SSRF guard; tests and intranet crawls lift it
    # Hosts, IPs or CIDR networks exempt from the private-address rule, e.g. ["127.0.0.1"] in tests:
    # narrower than allow_private_hosts, so a redirect from an allowed host to 10.0.0.1 is refused.
    allowed_hosts: list[str] = field(default_factory=list)
    honour_robots_noai: bool = True
    dns_cache_ttl_s: int = 300  # aiohttp's resolved-address cache; one lookup per host per 5 min
    offline: bool = False  # never use the network: images not in the archive → image.not_archived
    # Requests per image when none of its candidate URLs (srcset sizes, lazy attributes, src,
    # noscript copy) is archived: the next is tried after a 404/410 or undecodable bytes.
    max_candidate_fetches: int = 3


@dataclass
class DedupConfig:
    image_phash_max_distance: int = 4  # Hamming distance of 64-bit perceptual hashes
    image_url_max_count: int = 10  # OBELICS: image URLs seen more than 10 times are logos/buttons
    para_boilerplate_min_repeats: int = (
        3  # paragraphs repeated ≥ 3 times in one domain are boilerplate
    )
    # Near-duplicate documents, job-wide (MinHash + LSH, m3w_builder/minhash.py; MassiveWeb and
    # datatrove remove them the same way): word 5-gram shingles, 128 permutations cut into 16
    # bands of 8 rows, a candidate pair confirmed when its estimated Jaccard similarity is at least
    # the threshold. The curve of these settings is in docs/build.md § Near-duplicate documents.
    near_dedup: bool = True
    near_shingle_words: int = 5
    near_num_perm: int = 128
    near_bands: int = 16
    near_rows: int = 8
    near_threshold: float = 0.78


@dataclass
class ShardConfig:
    docs_per_shard: int = 1_000
    max_shard_bytes: int = 500_000_000


@dataclass
class AttachConfig:
    """DESIGN §4: Flamingo draws the attachment once per page with p_next = 1/2."""

    mode: str = "per-document"  # "per-document" | "per-image"
    p_next: float = 0.5


@dataclass
class BuildConfig:
    profile: str = "m3w"
    seed: int = 0
    sources: SourceConfig = field(default_factory=SourceConfig)
    dom: DomConfig = field(default_factory=DomConfig)
    text: TextFilterConfig = field(default_factory=TextFilterConfig)
    images: ImageConfig = field(default_factory=ImageConfig)
    fetch: FetchConfig = field(default_factory=FetchConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)
    attach: AttachConfig = field(default_factory=AttachConfig)

    @classmethod
    def for_profile(cls, profile: str = "m3w") -> BuildConfig:
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
        config = cls(profile=profile)
        if profile == "obelics":
            apply_mapping(config, OBELICS_OVERRIDES, "profile obelics")
        return config

    @classmethod
    def from_yaml(cls, path: str | Path, profile: str | None = None) -> BuildConfig:
        import yaml

        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
        config = cls.for_profile(profile or data.get("profile", "m3w"))
        data = {k: v for k, v in data.items() if k != "profile"}
        apply_mapping(config, _renamed(data, str(path)), str(path))
        return config

    def apply_set(self, assignment: str) -> None:
        """`m3w build --set section.field=value` (the value read as YAML), checked as YAML is."""
        apply_assignment(self, assignment)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# OBELICS (Laurençon et al. 2023, §3 and appendix A.2): paragraphs 4–1000 words, documents 10–2000
# words, stop-word ratio ≥ 0.3 / 0.35, special characters ≤ 0.3 / 0.275, repetition ≤ 0.1 (document words: 0.2); images
# jpg/png/webp, 150–20,000 px per side, aspect ≤ 2, 1–30 images per document.
OBELICS_OVERRIDES: dict[str, Any] = {
    # Cutoffs of OBELICS's released filtering config (configs/config_filter_web_documents.yaml).
    # Not ported: its common-word ratio and KenLM perplexity rules (they need its word lists/models).
    "text": {
        "para_min_words": 4,
        "para_max_words": 1_000,
        "para_min_stopword_ratio": 0.3,
        "para_max_special_char_ratio": 0.3,
        "para_max_char_rep_ratio": 0.1,
        "para_max_word_rep_ratio": 0.1,
        "para_max_flagged_ratio": 0.01,
        "para_min_punct_ratio": 0.001,
        "doc_min_words": 10,
        "doc_max_words": 2_000,
        "doc_min_mean_word_len": 0.0,
        "doc_max_mean_word_len": 1_000.0,
        "doc_max_symbol_word_ratio": 1.0,
        "doc_max_bullet_para_frac": 1.0,
        "doc_max_ellipsis_para_frac": 1.0,
        "doc_min_alpha_word_ratio": 0.0,
        "doc_min_stopwords": 0,
        "doc_min_stopword_ratio": 0.35,
        "doc_max_special_char_ratio": 0.275,
        "doc_max_dup_para_frac": 1.0,
        "doc_max_dup_para_char_frac": 1.0,
        "doc_max_top_ngram_char_frac": {},
        "doc_max_dup_ngram_char_frac": {},
        "doc_max_char_rep_ratio": 0.1,
        "doc_max_word_rep_ratio": 0.2,
        "doc_max_flagged_ratio": 0.01,
        "doc_min_punct_ratio": 0.03,
        "languages": ["en"],  # OBELICS is English-only (lang_id_doc_level_min_cutoff 0.8)
        "min_lang_score": 0.8,
    },
    "images": {
        "min_side": 150,
        "max_side": 20_000,
        "max_aspect": 2.0,
        "formats": ["jpeg", "png", "webp"],
        "max_images_per_doc": 30,
    },
}


# Settings that moved (issue 16): an old YAML key is read as its new one, with a warning.
RENAMED: dict[tuple[str, str], tuple[str, str]] = {
    ("dom", "max_images_per_doc"): ("images", "max_images_per_doc"),  # one cap, one code
    ("dedup", "para_max_repeats_per_domain"): ("dedup", "para_boilerplate_min_repeats"),
}


def _renamed(data: dict[str, Any], where: str) -> dict[str, Any]:
    """`data` with the keys of RENAMED moved to their new place (a copy)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for (section, name), (new_section, new_name) in RENAMED.items():
        old = out.get(section)
        if isinstance(old, dict) and name in old:
            logger.warning(
                "%s: %s.%s is now %s.%s; read as that", where, section, name, new_section, new_name
            )
            out.setdefault(new_section, {})
            if isinstance(out[new_section], dict):
                out[new_section].setdefault(new_name, old.pop(name))
    return out
