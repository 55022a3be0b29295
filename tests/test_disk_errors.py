"""A full or read-only disk (issue 14, "also low"): no temporary file survives an ENOSPC, and `m3w
build` on a read-only `--out` says so in one line instead of a traceback.

The disks are real: a tmpfs of a few KB (ENOSPC from the kernel) and a tmpfs mounted read-only
(EROFS), so these tests need mount privileges and skip without them (a user's laptop); CI runs as root.
"""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def mount(tmp_path):
    """mount(size_kb, read_only=False) → a fresh tmpfs folder, unmounted after the test."""
    mounted: list[Path] = []

    def make(size_kb: int, read_only: bool = False) -> Path:
        point = tmp_path / f"fs{len(mounted)}"
        point.mkdir()
        options = f"size={size_kb}k" + (",ro" if read_only else "")
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()[:200]}")
        mounted.append(point)
        return point

    yield make
    import gc

    gc.collect()  # a failed save's file objects may still sit in a traceback's frames
    for point in mounted:
        if subprocess.run(["umount", str(point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(point)], capture_output=True)  # detach when busy


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp") or ".tmp" in p.name]


def test_atomic_write_leaves_no_temporary_file_on_enospc(mount):
    from pipelines.build.stages import atomic_write

    disk = mount(64)
    with pytest.raises(OSError) as err:
        atomic_write(disk / "_work" / "big.json", b"x" * 200_000)
    assert err.value.errno == errno.ENOSPC
    assert _leftovers(disk) == [] and not (disk / "_work" / "big.json").exists()


def test_a_shard_that_fills_the_disk_leaves_no_partial_file(mount):
    import os

    from m3w_builder.document import Document, ImageNode, TextNode
    from m3w_builder.shards import ShardWriter

    disk = mount(64)
    image = ImageNode(src="x", data=os.urandom(100_000), ext="png", width=9, height=9)
    image.attach = "following"
    with pytest.raises(OSError), ShardWriter(disk / "000000.tar") as writer:
        writer.write(Document(url="https://a/1", nodes=[TextNode("a b"), image]))
    assert list(disk.iterdir()) == []


def test_a_checkpoint_that_fills_the_disk_leaves_the_previous_one_alone(mount):
    from pipelines.train import checkpoint

    disk = mount(96)
    small = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(small.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    args = dict(optimizer=optimizer, scheduler=scheduler, data_state={}, config={})
    checkpoint.save(disk, step=1, model=small, **args)
    big = torch.nn.Linear(200, 200)  # 160 KB of weights: more than is left
    with pytest.raises(OSError):
        checkpoint.save(
            disk, step=2, model=big, **{**args, "optimizer": torch.optim.AdamW(big.parameters())}
        )
    assert sorted(p.name for p in disk.iterdir()) == ["latest", "step-00000001"]
    assert checkpoint.choose(disk).path == disk / "step-00000001"


def _build(inputs: Path, out: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "build", str(inputs), "--out", str(out),
         "--num-cpus", "1", "--no-progress"],
        capture_output=True, text=True, timeout=timeout, cwd=REPO,
    )  # fmt: skip


def _pages(folder: Path, n: int = 3) -> Path:
    import random

    from hostile import page_html

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for i in range(n):
        (folder / f"{i}.html").write_bytes(page_html(rng, i, []))
    return folder


def test_build_on_a_read_only_out_is_one_line_not_a_traceback(mount, tmp_path):
    disk = mount(64, read_only=True)
    result = _build(_pages(tmp_path / "pages"), disk / "job")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("m3w build:")]
    assert len(lines) == 1 and "Read-only file system" in lines[0], result.stderr[-2000:]


@pytest.mark.slow
def test_build_on_a_full_disk_fails_clearly_and_leaves_no_temporary_file(mount, tmp_path):
    disk = mount(24)
    result = _build(_pages(tmp_path / "pages", n=40), disk / "job")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr.splitlines()[-1:][0], result.stderr[-2000:]
    assert _leftovers(disk) == [], _leftovers(disk)
