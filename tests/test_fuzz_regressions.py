"""Every crash or hang benchmarks/fuzz_soak.py ever found, replayed (issue 14 §8).

A crash is kept as its *recipe*, not its bytes (the inputs are mutants of dev-corpus files, which may
not be copied into the repository): the target, the corpus file it was seeded from, the one spliced
into it and the mutation operations; `fuzz_soak.mutate` rebuilds the exact input. The soak writes
each recipe as `<crash-dir>/<target>-crash-<hash>.json`; add it to REGRESSIONS with what it found.
A finding that reproduces without the corpus is written as its own test here (the corrupt AVIFs).
Found by hand before the soak existed, and kept as tests elsewhere: records of the wrong shape in
`m3w inspect` (test_inspect_hostile.py) and in the loader (test_data_hostile.py).

The smoke test runs every target once over a few fixed mutants of each seed kind, so the harness
itself stays working when a target's API changes.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import fuzz_soak  # noqa: E402

# {"target": ..., "seed": corpus path, "splice": corpus path, "ops": [[kind, a, b, c], ...],
#  "found": "what it raised, and the fix"}
REGRESSIONS: list[dict] = []


def _seed_bytes(target: str, name: str, scratch: Path) -> bytes:
    return dict(fuzz_soak.seeds(target, scratch))[name]


@pytest.mark.parametrize("case", REGRESSIONS, ids=[c["found"][:40] for c in REGRESSIONS])
def test_a_fuzz_finding_stays_fixed(case, corpus, tmp_path):
    data = fuzz_soak.mutate(
        _seed_bytes(case["target"], case["seed"], tmp_path),
        [tuple(op) for op in case["ops"]],
        _seed_bytes(case["target"], case["splice"], tmp_path),
    )
    fuzz_soak.TARGETS[case["target"]](data, tmp_path)  # raises if it crashes again


def _avif() -> bytes:
    import io

    from PIL import Image

    from pipelines.sample_site import _draw_image

    picture = Image.open(io.BytesIO(_draw_image(random.Random(0), 160, 120, "PNG")))
    out = io.BytesIO()
    picture.save(out, "AVIF")
    return out.getvalue()


@pytest.mark.parametrize(
    "damage",
    [lambda d: d[:96] + bytes(8) + d[104:],  # "Missing or empty image item", at open
     lambda d: bytes(b ^ 0xFF if 400 <= i < 420 else b for i, b in enumerate(d))],  # at decode
    ids=["open", "decode"],
)  # fmt: skip
def test_a_corrupt_avif_is_a_skip_not_a_runtime_error(damage):
    """Found by the soak's image target (2026-12-02): Pillow's AVIF plugin raises RuntimeError for
    corrupt files, which process_image let through (the build's resolver logged a traceback per
    image). The soak's inputs were corpus mutants; these are generated AVIFs damaged alike."""
    from m3w_builder.config import BuildConfig
    from m3w_builder.images import process_image
    from m3w_builder.reasons import Skip

    pytest.importorskip("PIL.AvifImagePlugin")
    with pytest.raises(Skip) as err:
        process_image(damage(_avif()), BuildConfig.for_profile("m3w").images)
    assert err.value.code == "image.decode_error"


@pytest.mark.slow
@pytest.mark.parametrize("target", sorted(fuzz_soak.TARGETS))
def test_every_target_survives_a_few_fixed_mutants(target, corpus, tmp_path):
    pool = fuzz_soak.seeds(target, tmp_path)
    rng = random.Random(target)
    for _ in range(6):
        _, seed = rng.choice(pool)
        _, other = rng.choice(pool)
        ops = [(rng.randrange(8), rng.randrange(1 << 30), rng.randrange(1 << 16), rng.randrange(1 << 16))
               for _ in range(rng.randint(1, 6))]  # fmt: skip
        fuzz_soak.TARGETS[target](fuzz_soak.mutate(seed, ops, other), tmp_path)
