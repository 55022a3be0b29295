"""Every crash or hang benchmarks/fuzz_soak.py ever found, replayed (issue 14 §8).

A crash is kept as its *recipe*, not its bytes (the inputs are mutants of dev-corpus files, which may
not be copied into the repository): the target, the corpus file it was seeded from, the one spliced
into it and the mutation operations; `fuzz_soak.mutate` rebuilds the exact input. The soak writes
each recipe as `<crash-dir>/<target>-crash-<hash>.json`; add it to REGRESSIONS with what it found,
and `raises`: what the unguarded library raised on it, so that a replay that no longer rebuilds the
crashing input (a recipe or a seed changed) fails instead of passing on a harmless input.
The only finding so far (2026-12-02: Pillow's AVIF plugin raising RuntimeError) is replayed both
ways: on generated AVIFs damaged alike (no corpus needed), and from the corpus AVIF by recipes
rebuilt after the fact (the soak's crash folder was not kept) that make Pillow raise the three
messages the soak saw. A synthetic recipe checks the replay itself: a saved recipe rebuilds its
input byte for byte and a target that still crashes fails the replay.
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
#  "found": "what it raised, and the fix", "raises": "what the unguarded library raises on it"}
_AVIF = "images/pillow/avif_hopper.avif"
_AVIF_FIX = (
    "RuntimeError from Pillow's AVIF plugin let through process_image; now image.decode_error"
)
REGRESSIONS: list[dict] = [
    {"target": "image", "seed": _AVIF, "splice": _AVIF, "ops": [[1, 88, 0, 0]],
     "found": f"at open, {_AVIF_FIX}", "raises": "Missing or empty image item"},
    {"target": "image", "seed": _AVIF, "splice": _AVIF, "ops": [[1, 122, 0, 0]],
     "found": f"at decode, {_AVIF_FIX}", "raises": "Decoding of color planes failed"},
    {"target": "image", "seed": _AVIF, "splice": _AVIF, "ops": [[3, 212, 0, 0]],
     "found": f"at open, {_AVIF_FIX}", "raises": "Not implemented"},
]  # fmt: skip


def _seed_bytes(target: str, name: str, scratch: Path) -> bytes:
    return dict(fuzz_soak.seeds(target, scratch))[name]


def _rebuild(case: dict, scratch: Path) -> bytes:
    """The input a recipe names, rebuilt from its seeds."""
    return fuzz_soak.mutate(
        _seed_bytes(case["target"], case["seed"], scratch),
        [tuple(op) for op in case["ops"]],
        _seed_bytes(case["target"], case["splice"], scratch),
    )


def _replay(case: dict, scratch: Path) -> bytes:
    """Run the case's target on its input: raises if the finding is back."""
    data = _rebuild(case, scratch)
    fuzz_soak.TARGETS[case["target"]](data, scratch)
    return data


def _unguarded(target: str, data: bytes) -> None:
    """What the target's library does with `data` without m3w's guards."""
    import io

    from PIL import Image

    assert target == "image", target  # add the other targets' libraries with their first finding
    Image.open(io.BytesIO(data)).load()


@pytest.mark.parametrize("case", REGRESSIONS, ids=[c["raises"] for c in REGRESSIONS])
def test_a_fuzz_finding_stays_fixed(case, corpus, tmp_path):
    if case["target"] == "image" and case["seed"].endswith(".avif"):
        pytest.importorskip("PIL.AvifImagePlugin")
    data = _rebuild(case, tmp_path)
    with pytest.raises(Exception, match=case["raises"]):  # the recipe still rebuilds the crash
        _unguarded(case["target"], data)
    _replay(case, tmp_path)  # and m3w's target survives it


def test_a_saved_recipe_replays_its_input_and_its_crash(tmp_path, monkeypatch):
    """The soak's `Runner.save` → a REGRESSIONS entry → the replay above, on synthetic seeds and a
    target that crashes on one input: the recipe rebuilds the saved bytes exactly, and replaying
    it raises while the bug is there (so test_a_fuzz_finding_stays_fixed can fail)."""
    import json

    pool = [("warc/a.warc", b"WARC/1.0\r\nContent-Length: 120\r\n\r\n"), ("warc/b.warc", b"XYZ")]
    monkeypatch.setattr(fuzz_soak, "seeds", lambda target, scratch: pool)

    def target(data: bytes, scratch: Path) -> None:
        if b"Content-Length: 100000000000000000" in data:
            raise OverflowError("a lying length")

    monkeypatch.setitem(fuzz_soak.TARGETS, "synthetic", target)
    ops = [(7, 2, 0, 6), (5, 0, 2, 1)]  # digits[2] is in "120": → 10^17; then "YZ" spliced at 0
    data = fuzz_soak.mutate(pool[0][1], ops, pool[1][1])
    assert data == b"YZWARC/1.0\r\nContent-Length: 100000000000000000\r\n\r\n"
    runner = fuzz_soak.Runner("synthetic", tmp_path / "crashes")
    recipe = {"seed": pool[0][0], "splice": pool[1][0], "ops": [list(o) for o in ops]}
    runner.save("crash", data, "OverflowError: a lying length", recipe)
    [saved] = (tmp_path / "crashes").glob("synthetic-crash-*.json")
    case = json.loads(saved.read_text())  # what goes into REGRESSIONS
    assert _rebuild(case, tmp_path) == data
    with pytest.raises(OverflowError):
        _replay(case, tmp_path)
    monkeypatch.setitem(fuzz_soak.TARGETS, "synthetic", lambda data, scratch: None)  # fixed
    assert _replay(case, tmp_path) == data


def _avif() -> bytes:
    import io

    from PIL import Image

    from pipelines.demo.sample_site import draw_image

    picture = Image.open(io.BytesIO(draw_image(random.Random(0), 160, 120, "PNG")))
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
