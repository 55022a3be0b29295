"""Shared fixtures. Tests never reach a model hub (HF_HUB_OFFLINE=1) and read the dev corpus only from
../shared next to the checkout, skipping with a reason where it is absent (a user's fresh clone)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("M3W_DEV_CORPUS", REPO.parent / "shared" / "corpus" / "dev"))


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The dev corpus (real pages, WARCs, images); tests using it skip where it is absent."""
    if not CORPUS.is_dir():
        pytest.skip(
            f"dev corpus not found at {CORPUS} (set M3W_DEV_CORPUS or clone beside shared/)"
        )
    return CORPUS
