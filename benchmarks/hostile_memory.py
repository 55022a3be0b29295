"""Peak RSS of `m3w extract` and of every build worker on hostile inputs (issue 14 §2).

Target: under 512 MB for each input below, whatever it claims or inflates to. Inputs, generated here
into a temporary folder (tests/hostile.py; never committed) or read from the dev corpus:

- `zeros-1GiB.warc.gz`: 1 MB holding a 1 GiB zero-filled image record that every page shows
  (the old reader: 2.2 GB in `m3w extract`, 3.25 GB in the write worker);
- `zeros-3GiB.warc.gz`: the same with 3 GiB (old: 6.4 GB);
- `lie-1e17.warc.gz`, `lie-6MB.warc`: a record whose Content-Length claims 10^17 bytes / 6 MB more;
- `bomb.html.gz`: 1.2 MB inflating to 1.2 GB (old `m3w extract`: 2.5 GB);
- `attrs-300k.html`: one element with 300,000 attributes (libxml2 takes > 300 s; killed at the
  per-page deadline, here `--page-kill-timeout 5`);
- `bad-images.warc.gz`: a page showing every corrupt/bomb image of the corpus, archived beside it;
- the corpus' bad archives (warcio's bad/truncated/wrong-chunks files, `bad.arc`);
- baselines, same run: the corpus' real 2.5 MB Archive-It crawl `aut/example.warc.gz` and a benign
  generated crawl.

Each input is given to `m3w extract` and to `m3w build --num-cpus 2` (a local Ray), each a fresh
process tree watched every 50 ms: peak RSS (VmHWM) per process, named by its title (the CLI, the
extract parser process, `ray::extract_unit`, `ray::write_unit`, ...); the table shows the CLI, the
largest worker (what the target is about) and Ray's own processes (GCS, raylet, agents: not a
target). Run it in a loopback-only namespace (a local Ray probes the network at start-up):

    ../shared/bin/netless python benchmarks/hostile_memory.py [--only NAME,...] [--no-build]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
CORPUS = Path(os.environ.get("M3W_DEV_CORPUS", REPO.parent / "shared" / "corpus" / "dev"))
TARGET_MB = 512
KILL_S = "5"


# ------------------------------------------------------------------------------------- inputs


def make_inputs(folder: Path) -> dict[str, Path]:
    """name → file; the generated ones first, then the corpus' (skipped when absent)."""
    import hostile

    out: dict[str, Path] = {}
    hostile.zero_image_warc(folder / "zeros-1GiB.warc.gz")
    out["zeros-1GiB.warc.gz"] = folder / "zeros-1GiB.warc.gz"
    hostile.zero_image_warc(folder / "zeros-3GiB.warc.gz", zeros=3 << 30)
    out["zeros-3GiB.warc.gz"] = folder / "zeros-3GiB.warc.gz"
    out["lie-1e17.warc.gz"] = hostile.lying_warc(
        folder / "lie-1e17.warc.gz", "huge_1e17", True
    ).path
    out["lie-6MB.warc"] = hostile.lying_warc(folder / "lie-6MB.warc", "too_long_6mb", False).path
    hostile.html_gz_bomb(folder / "bomb.html.gz")
    out["bomb.html.gz"] = folder / "bomb.html.gz"
    (folder / "attrs-300k.html").write_bytes(hostile.many_attributes_page())
    out["attrs-300k.html"] = folder / "attrs-300k.html"
    rng = random.Random(2)
    records, _, _ = hostile.small_crawl_records(rng, 3)
    benign = folder / "benign.warc.gz"
    hostile.write_records(benign, records, gz=True)
    if CORPUS.is_dir():
        out["bad-images.warc.gz"] = _bad_images_warc(folder / "bad-images.warc.gz")
        warcio = CORPUS / "warc" / "warcio"
        for name in ("example-bad-non-chunked.warc.gz", "example-bad.warc.gz.bad",
                     "example-wrong-chunks.warc.gz", "example-trunc.warc", "bad.arc"):  # fmt: skip
            # a copy under an archive name: the build plans units by suffix (.bad is not one)
            dest = folder / (name + (".warc.gz" if name.endswith(".bad") else ""))
            shutil.copy(warcio / name, dest)
            out[f"corpus {name}"] = dest
        out["baseline: corpus aut/example.warc.gz"] = CORPUS / "warc" / "aut" / "example.warc.gz"
    out["baseline: generated crawl"] = benign
    return out


def _bad_images_warc(path: Path) -> Path:
    """One page per corrupt/bomb/edge image of the corpus, the image archived after its page."""
    import hostile

    rng = random.Random(3)
    pillow = CORPUS / "images" / "pillow"
    bad = ("decompression_bomb.gif", "decompression_bomb.ico", "bmp_b_reallybig.bmp",
           "png_decompression_dos.png", "truncated_jpeg.jpg", "truncated_image.png",
           "truncated_end_chunk.png", "broken_data_stream.png", "ultrahdr.jpg", "broken.png",
           "zero_width.gif", "no_palette.gif", "sugarshack_bad_mpo_header.jpg")  # fmt: skip
    records = []
    for i, name in enumerate(bad):
        src = f"{hostile.HOST}/img/{name}"
        page = hostile.page_html(rng, i, [src])
        records.append(
            hostile.warc_response(f"{hostile.HOST}/bad/{i}.html", "text/html", page, n=i)
        )
        data = (pillow / name).read_bytes()
        records.append(hostile.warc_response(src, "image/jpeg", data, n=500 + i))
    hostile.write_records(path, records, gz=True)
    return path


# ------------------------------------------------------------------------------------ watching


@dataclass
class Tree:
    """Peak RSS of every process under one root, sampled until the root exits."""

    root: int
    peaks: dict[int, float] = field(default_factory=dict)  # pid → MB
    titles: dict[int, set[str]] = field(default_factory=dict)

    def sample(self) -> None:
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
        todo, seen = [self.root], set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            todo += children.get(pid, [])
            hwm = _vm_hwm_mb(pid)
            if hwm:
                self.peaks[pid] = max(self.peaks.get(pid, 0.0), hwm)
                self.titles.setdefault(pid, set()).add(_title(pid))

    def by_role(self) -> dict[str, float]:
        roles: dict[str, float] = {}
        for pid, mb in self.peaks.items():
            role = _role(self.titles[pid], pid == self.root)
            roles[role] = max(roles.get(role, 0.0), mb)
        return roles


def _vm_hwm_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _title(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [w.decode(errors="replace") for w in raw if w]
    if not words:
        return "?"
    if words[0].startswith("ray::"):
        return words[0].split()[0]
    return " ".join(Path(w).name if i == 0 else w for i, w in enumerate(words[:3]))


def _role(titles: set[str], is_root: bool) -> str:
    if is_root:
        return "cli"
    tasks = sorted(
        t for t in titles if t.startswith("ray::") and "Agent" not in t and t != "ray::IDLE"
    )
    if tasks:
        return "worker"
    if any(t.startswith("ray::") for t in titles) or any(
        k in t
        for t in titles
        for k in ("gcs_server", "raylet", "monitor.py", "dashboard", "log_monitor")
    ):
        return "ray system"
    if any("multiprocessing" in t or "spawn" in t for t in titles) or any(
        "python" in t for t in titles
    ):
        return "worker"  # m3w extract's parser process
    return "other"


def watched(command: list[str], timeout: float) -> tuple[int, float, Tree]:
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    tree = Tree(proc.pid)
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            tree.sample()
            stop.wait(0.05)

    thread = threading.Thread(target=poll, daemon=True)
    started = time.monotonic()
    thread.start()
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    stop.set()
    thread.join()
    if proc.returncode not in (0, 1):
        tail = err.decode(errors="replace").strip().splitlines()[-1:] if err else []
        print(f"  (exit {proc.returncode}: {' '.join(tail)[:200]})", file=sys.stderr)
    return proc.returncode, time.monotonic() - started, tree


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated input names (substring match)")
    parser.add_argument("--no-build", action="store_true", help="m3w extract only")
    args = parser.parse_args(argv)
    m3w = [sys.executable, "-m", "pipelines.cli"]
    load = os.getloadavg()
    started = datetime.now(timezone.utc)
    rows = []
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        folder = Path(tmp)
        inputs = make_inputs(folder)
        if args.only:
            wanted = args.only.split(",")
            inputs = {k: v for k, v in inputs.items() if any(w in k for w in wanted)}
        for name, path in inputs.items():
            print(f"{name} ...", file=sys.stderr)
            rc_e, s_e, ex = watched([*m3w, "extract", str(path), "--no-filter",
                                     "--page-kill-timeout", KILL_S], timeout=900)  # fmt: skip
            extract = ex.by_role()
            build: dict[str, float] = {}
            rc_b, s_b = None, 0.0
            if not args.no_build:
                out = folder / "job"
                shutil.rmtree(out, ignore_errors=True)
                rc_b, s_b, bt = watched([*m3w, "build", str(path), "--out", str(out), "--num-cpus", "2",
                                         "--no-progress", "--page-kill-timeout", KILL_S], timeout=1800)  # fmt: skip
                build = bt.by_role()
            rows.append((name, path.stat().st_size, rc_e, s_e, extract, rc_b, s_b, build))
    print(f"hostile_memory {started:%Y-%m-%d %H:%M} UTC, {platform.machine()} {os.cpu_count()} cores, "
          f"load {load[0]:.2f} {load[1]:.2f} at start; target: every process < {TARGET_MB} MB")  # fmt: skip
    print()
    print(
        "| input | bytes | extract: CLI MB | extract: parser MB | s | exit | build: driver MB | "
        "build: largest worker MB | build: Ray system MB | s | exit | < 512 MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    worst = 0.0
    for name, size, rc_e, s_e, ex, rc_b, s_b, bd in rows:
        targets = [ex.get("cli", 0), ex.get("worker", 0), bd.get("cli", 0), bd.get("worker", 0)]
        worst = max(worst, *targets)
        ok = "yes" if max(targets) < TARGET_MB else "**no**"
        b = (f"{bd.get('cli', 0):.0f} | {bd.get('worker', 0):.0f} | {bd.get('ray system', 0):.0f} | "
             f"{s_b:.0f} | {rc_b}" if bd else "- | - | - | - | -")  # fmt: skip
        print(f"| {name} | {size:,} | {ex.get('cli', 0):.0f} | {ex.get('worker', 0):.0f} | {s_e:.1f} | "
              f"{rc_e} | {b} | {ok} |")  # fmt: skip
    print(f"\nlargest m3w process: {worst:.0f} MB (Ray's own processes are not counted)")
    return 0 if worst < TARGET_MB else 1


if __name__ == "__main__":
    raise SystemExit(main())
