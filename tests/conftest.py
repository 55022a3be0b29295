"""Shared fixtures. Tests never reach a model hub (HF_HUB_OFFLINE=1) and read the dev corpus only from
../shared next to the checkout, skipping with a reason where it is absent (a user's fresh clone).

Nothing a test starts may talk to an address other than loopback. CI runs the suite in a network
namespace with only `lo` up (.ci/run); on top of that, before any Ray starts, the proxy variables
send every HTTP request of a library that honours them (requests, urllib: Ray's cloud-metadata probe
among them) to a closed loopback port, where it fails at once. m3w's own fetcher ignores them
(aiohttp with `trust_env=False`), so it still reaches the tests' 127.0.0.1 servers
(tests/test_network_isolation.py checks both)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from pipelines.build.ray_local import CLOSED_PORT_PROXY_ENV

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

# http(s)_proxy → the discard port on 127.0.0.1 (nothing listens there), loopback exempt
os.environ.update(CLOSED_PORT_PROXY_ENV)

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("M3W_DEV_CORPUS", REPO.parent / "shared" / "corpus" / "dev"))


@pytest.fixture
def sigint_reaches_children():
    """A test that interrupts a child with SIGINT needs the signal not ignored: a suite started from a
    background job (`nohup`, `cmd &` in a script) inherits SIGINT ignored, its children too, and a
    Python child then never raises KeyboardInterrupt (a CI run launched with `&` saw exit 0 for 130).
    Catching it here resets it to the default in every child that execs."""
    before = signal.getsignal(signal.SIGINT)
    if before == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The dev corpus (real pages, WARCs, images); tests using it skip where it is absent."""
    if not CORPUS.is_dir():
        pytest.skip(
            f"dev corpus not found at {CORPUS} (set M3W_DEV_CORPUS or clone beside shared/)"
        )
    return CORPUS
