"""A real two-node Ray cluster on this machine (issue "Scale" §4): `ray start --head` and a second
`ray start --address`, both on 127.0.0.1 with token authentication, then `m3w build --address`.

Checked: tasks ran on both nodes (Ray's state API), the shards equal a local build's byte for byte,
a build that loses its second node mid-run finishes on the head or fails with a clear message and a
rerun is exact, and `m3w build` without `--address` never joins the running cluster. The test stops
exactly the processes it started (found by their own `--temp-dir`): `ray stop` would end every Ray on
the machine.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.demo.sample_site import make_site, write_warcs

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
M3W = [sys.executable, "-m", "pipelines.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids_with(marker: str) -> list[int]:
    """Processes whose command line names `marker` (our nodes' temp folders)."""
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmd:
                out.append(int(proc.name))
    return out


def _kill(pids: list[int]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(1.0)


class Cluster:
    def __init__(self) -> None:
        tag = f"{os.getpid()}{secrets.token_hex(2)}"
        self.head_dir, self.worker_dir = f"/tmp/m3wt{tag}h", f"/tmp/m3wt{tag}w"
        self.port, self.dashboard = _free_port(), _free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
        env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # a multi-node cluster
        env.update(
            RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_USAGE_STATS_ENABLED="0"
        )
        self.env = env
        self.address = f"127.0.0.1:{self.port}"

    def start(self) -> None:
        head = [RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(self.port),
                "--num-cpus", "1", "--temp-dir", self.head_dir, "--include-dashboard", "true",
                "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard),
                "--disable-usage-stats"]  # fmt: skip
        subprocess.run(head, env=self.env, check=True, capture_output=True, timeout=180)
        self.start_worker()

    def start_worker(self) -> None:
        worker = [RAY, "start", "--address", self.address, "--node-ip-address", "127.0.0.1",
                  "--num-cpus", "1", "--temp-dir", self.worker_dir]  # fmt: skip
        subprocess.run(worker, env=self.env, check=True, capture_output=True, timeout=180)

    def stop_worker(self) -> None:
        _kill(_pids_with(self.worker_dir))

    def stop(self) -> None:
        _kill(_pids_with(self.worker_dir) + _pids_with(self.head_dir))

    def task_nodes(self) -> dict[str, set[str]]:
        """Task name → the node ids it ran on, from Ray's state API."""
        return self._tasks()[0]

    def task_count(self) -> int:
        return self._tasks()[1]

    def _tasks(self) -> tuple[dict[str, set[str]], int]:
        code = (
            "import json; from ray.util.state import list_tasks\n"
            f"ts = list_tasks(address='http://127.0.0.1:{self.dashboard}', limit=10000, detail=True)\n"
            "print(json.dumps([[t.name, t.node_id] for t in ts if t.node_id]))"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code], env=self.env, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        out: dict[str, set[str]] = {}
        rows = json.loads(proc.stdout.strip().splitlines()[-1])
        for name, node in rows:
            out.setdefault(name, set()).add(node)
        return out, len(rows)


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    try:
        c.start()
        yield c
    finally:
        c.stop()
    assert not _pids_with(c.head_dir) and not _pids_with(c.worker_dir)


@pytest.fixture(scope="module")
def crawl(tmp_path_factory):
    root = tmp_path_factory.mktemp("crawl")
    make_site(root / "site", pages=36, seed=2)
    return [str(p) for p in write_warcs(root / "site", root / "warc", files=6)]


def _build(inputs, out, *extra, env=None, timeout=600):
    cmd = [*M3W, "build", *inputs, "--out", str(out), "--config", str(_offline(out.parent)),
           "--no-progress", *extra]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _offline(folder: Path) -> Path:
    path = folder / "offline.yaml"
    path.write_text("fetch: {offline: true}\nshards: {docs_per_shard: 4}\n")
    return path


@pytest.fixture(scope="module")
def local_manifest(crawl, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "job"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = _build(crawl, out, "--num-cpus", "2", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return (out / "manifest.jsonl").read_text()


def test_a_build_on_two_nodes_equals_a_local_build(cluster, crawl, local_manifest, tmp_path):
    out = tmp_path / "job"
    proc = _build(crawl, out, "--address", cluster.address, env=cluster.env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "manifest.jsonl").read_text() == local_manifest  # same shards, byte for byte
    nodes = cluster.task_nodes()
    ran = set().union(*(v for k, v in nodes.items() if "extract" in k or "write" in k))
    assert len(ran) == 2, nodes  # both nodes ran build tasks


def test_a_build_without_address_never_joins_a_running_cluster(
    cluster, crawl, local_manifest, tmp_path
):
    before = cluster.task_count()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = _build(crawl, tmp_path / "job", "--num-cpus", "1", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Connecting to existing Ray cluster" not in proc.stderr
    assert (tmp_path / "job" / "manifest.jsonl").read_text() == local_manifest
    assert cluster.task_count() == before  # not one task of it ran on the cluster


def test_losing_the_second_node_mid_build_then_a_rerun_is_exact(
    cluster, crawl, local_manifest, tmp_path
):
    out = tmp_path / "job"
    cmd = [*M3W, "build", *crawl, "--out", str(out), "--config", str(_offline(tmp_path)),
           "--no-progress", "--address", cluster.address]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if list((out / "_work" / "extract").glob("*.stats.json")):
            break
        time.sleep(0.2)
    cluster.stop_worker()  # the second node dies mid-extract
    _, err = proc.communicate(timeout=600)
    try:
        if proc.returncode != 0:  # a clear message, not a bare traceback
            assert "run the same command again" in err or "failed" in err, err[-3000:]
        rerun = _build(crawl, out, "--address", cluster.address, env=cluster.env)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert (out / "manifest.jsonl").read_text() == local_manifest
    finally:
        cluster.start_worker()
