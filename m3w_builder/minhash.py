"""MinHash signatures and LSH band keys for near-duplicate documents (MassiveWeb, datatrove).

The same article with a changed date line, another footer or one paragraph more is not an exact
duplicate, but its word 5-grams ("shingles") mostly agree. The Jaccard similarity J of two
documents' shingle sets is estimated by the share of equal entries in their MinHash signatures
(K independent hash functions, the minimum of each over the shingles; P(equal) = J). Pairs are
*found* by locality-sensitive hashing — the signature cut into `bands` bands of `rows` entries; two
documents sharing any band are candidates (P = 1 − (1 − J^rows)^bands) — and *confirmed* when the
estimated J is at least the threshold. Confirming is what makes the decision sharp: with K = 128,
threshold 0.78, bands 16 × rows 8, a pair with J ≥ 0.85 is removed with probability ≈ 0.98 and one
with J < 0.6 with < 1e-4 (docs/build.md § Near-duplicate documents has the curve).

Everything is numpy on whole documents (no per-shingle Python loop) and depends only on the text:
word hashes are polynomial hashes of the UTF-8 bytes, so two processes, two machines and two runs
agree on every signature.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

_MIX = np.uint64(0x9E3779B97F4A7C15)
_BASE = np.uint64(0x100000001B3)  # odd, so invertible modulo 2^64
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True, slots=True)
class MinHashConfig:
    shingle_words: int = 5
    num_perm: int = 128
    bands: int = 16
    rows: int = 8
    threshold: float = 0.78
    seed: int = 1

    def __post_init__(self) -> None:
        if self.bands * self.rows > self.num_perm:
            raise ValueError(
                f"dedup.near: bands × rows ({self.bands}×{self.rows}) exceeds num_perm "
                f"({self.num_perm})"
            )


def _word_hashes(text: str) -> np.ndarray:
    """A stable uint64 per word of the lower-cased text: the polynomial hash of its UTF-8 bytes,
    computed for all words at once from prefix sums (hash(w) = Σ b_j · BASE^j, wrapping)."""
    words = _WORD.findall(text.lower())
    if not words:
        return np.empty(0, dtype=np.uint64)
    data = np.frombuffer(" ".join(words).encode("utf-8", "surrogatepass"), dtype=np.uint8)
    spaces = np.flatnonzero(data == 32)
    starts = np.concatenate(([0], spaces + 1))
    ends = np.concatenate((spaces, [len(data)]))
    b = data.astype(np.uint64) + np.uint64(1)
    powers = np.ones(len(b), dtype=np.uint64)
    if len(b) > 1:
        powers[1:] = np.cumprod(np.full(len(b) - 1, _BASE, dtype=np.uint64), dtype=np.uint64)
    prefix = np.concatenate(([np.uint64(0)], np.cumsum(b * powers, dtype=np.uint64)))
    raw = prefix[ends] - prefix[starts]
    # Divide out BASE^start (multiply by its inverse mod 2^64) so the hash of a word does not
    # depend on where it stands, then mix the length in.
    return (raw * _inverse_powers(starts)) * _MIX + (ends - starts).astype(np.uint64)


def _inverse_powers(exponents: np.ndarray) -> np.ndarray:
    inv = np.uint64(pow(int(_BASE), -1, 1 << 64))
    out = np.ones(len(exponents), dtype=np.uint64)
    base = np.full(len(exponents), inv, dtype=np.uint64)
    e = exponents.astype(np.int64).copy()
    while e.any():  # square-and-multiply, vectorised over all exponents
        odd = (e & 1).astype(bool)
        out[odd] *= base[odd]
        base *= base
        e >>= 1
    return out


def shingles(text: str, n: int) -> np.ndarray:
    """Distinct uint64 hashes of the word n-grams of `text` (the whole text as one shingle when it
    has fewer than n words)."""
    words = _word_hashes(text)
    if not len(words):
        return np.empty(0, dtype=np.uint64)
    if len(words) < n:
        n = len(words)
    m = len(words) - n + 1
    keys = words[:m].copy()
    for k in range(1, n):
        keys = keys * _MIX + words[k : k + m]
    return np.unique(keys)


def _permutations(config: MinHashConfig) -> tuple[np.ndarray, np.ndarray]:
    """K random bijections x → a·x + b of the 32-bit integers (a odd), fixed by the seed."""
    rng = np.random.default_rng(config.seed)
    a = rng.integers(0, 1 << 32, size=config.num_perm, dtype=np.uint64).astype(np.uint32)
    b = rng.integers(0, 1 << 32, size=config.num_perm, dtype=np.uint64).astype(np.uint32)
    return a | np.uint32(1), b


_PERMS: dict[MinHashConfig, tuple[np.ndarray, np.ndarray]] = {}


def signature(text: str, config: MinHashConfig) -> np.ndarray:
    """The K = num_perm MinHash values (uint32) of `text`'s shingles; all ones for no text."""
    if config not in _PERMS:
        _PERMS[config] = _permutations(config)
    a, b = _PERMS[config]
    keys = shingles(text, config.shingle_words)
    if not len(keys):
        return np.full(config.num_perm, 0xFFFFFFFF, dtype=np.uint32)
    x = ((keys >> np.uint64(32)) ^ keys).astype(np.uint32)  # fold to 32 bits
    out = np.empty(config.num_perm, dtype=np.uint32)
    step = max(1, (1 << 21) // len(x))  # bound the K × shingles matrix to ~8 MB
    for start in range(0, config.num_perm, step):
        stop = min(config.num_perm, start + step)
        out[start:stop] = (x[None, :] * a[start:stop, None] + b[start:stop, None]).min(axis=1)
    return out


def band_keys(signatures: np.ndarray, config: MinHashConfig) -> np.ndarray:
    """[docs, bands] uint64: each band's `rows` values hashed together with the band's number, so
    equal keys mean equal bands (of the same band)."""
    sig = np.asarray(signatures, dtype=np.uint64)[:, : config.bands * config.rows]
    sig = sig.reshape(len(sig), config.bands, config.rows)
    keys = np.broadcast_to(
        np.arange(1, config.bands + 1, dtype=np.uint64) * _MIX, sig.shape[:2]
    ).copy()
    for r in range(config.rows):
        keys = keys * _MIX + sig[:, :, r]
    return keys


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """The MinHash estimate of the Jaccard similarity of two signatures."""
    return float(np.mean(a == b))


def jaccard(a: str, b: str, n: int = 5) -> float:
    """Exact Jaccard similarity of two texts' shingle sets (for tests and the curve)."""
    x, y = shingles(a, n), shingles(b, n)
    if not len(x) and not len(y):
        return 1.0
    inter = len(np.intersect1d(x, y, assume_unique=True))
    return inter / (len(x) + len(y) - inter)
