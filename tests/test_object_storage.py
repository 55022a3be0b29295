"""`--out s3://bucket/job` with the same guarantees as a folder (issue "Scale" §3), against a real S3
HTTP API on 127.0.0.1 (moto's server mode) through s3fs: inputs read from it, `_work/` state,
shards, manifest and report written to it, a killed build resumed, and `m3w inspect` and `m3w train`
reading the result by URL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

from pipelines.demo.sample_site import make_site, write_warcs  # noqa: E402

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
M3W = [sys.executable, "-m", "pipelines.cli"]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import s3fs

    fs = s3fs.S3FileSystem(anon=False)
    fs.mkdir("inputs")
    fs.mkdir("jobs")
    root = tmp_path_factory.mktemp("site")
    make_site(root / "site", pages=30, seed=7)
    for path in write_warcs(root / "site", root / "warc", files=4):
        fs.put_file(str(path), f"inputs/crawl/{path.name}")
    try:
        yield fs, {**os.environ, **env, "RAY_ADDRESS": ""}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def _config(folder: Path) -> Path:
    path = folder / "build.yaml"
    path.write_text("fetch: {offline: true}\nshards: {docs_per_shard: 4}\n")
    return path


def _build(out: str, folder: Path, env: dict, **kw):
    cmd = [*M3W, "build", "s3://inputs/crawl/*.warc.gz", "--out", out, "--config",
           str(_config(folder)), "--no-progress", "--num-cpus", "2"]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, **kw)


@pytest.fixture(scope="module")
def built(s3, tmp_path_factory):
    fs, env = s3
    folder = tmp_path_factory.mktemp("b")
    local = folder / "local-job"
    proc = _build(str(local), folder, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _build("s3://jobs/one", folder, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return fs, env, local


def test_a_build_to_object_storage_equals_a_local_build(built):
    fs, _, local = built
    remote_manifest = fs.cat("jobs/one/manifest.jsonl").decode()
    assert remote_manifest == (local / "manifest.jsonl").read_text()  # the same shards, bytes
    names = [json.loads(line)["name"] for line in remote_manifest.splitlines()]
    assert names and all(fs.exists(f"jobs/one/{n}") for n in names)
    for line in remote_manifest.splitlines():  # every published shard is whole
        info = json.loads(line)
        assert fs.size(f"jobs/one/{info['name']}") == info["bytes"]
    report = json.loads(fs.cat("jobs/one/report.json"))
    assert report["documents"] == json.loads((local / "report.json").read_text())["documents"] > 0
    assert not fs.glob("jobs/one/_work/write/*/*.tar")  # parts moved to their final names


def test_a_killed_build_to_object_storage_resumes_exactly(s3, built, tmp_path):
    fs, env, local = built
    cmd = [*M3W, "build", "s3://inputs/crawl/*.warc.gz", "--out", "s3://jobs/two", "--config",
           str(_config(tmp_path)), "--no-progress", "--num-cpus", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if fs.exists("jobs/two/_work/job.json"):  # planned; Ray starting, tasks about to run
            break
        time.sleep(0.2)
    time.sleep(4.0)
    assert proc.poll() is None, "the build finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its local Ray, mid-build
    proc.wait()
    fs.invalidate_cache()
    assert not fs.exists("jobs/two/manifest.jsonl")  # no commit: nothing looks finished
    rerun = _build("s3://jobs/two", tmp_path, env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert fs.cat("jobs/two/manifest.jsonl").decode() == (local / "manifest.jsonl").read_text()


def test_inspect_reads_the_job_by_url(built):
    _, env, local = built
    for sub in (["stats", "s3://jobs/one"], ["verify", "s3://jobs/one"]):
        proc = subprocess.run([*M3W, "inspect", *sub], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
    stats = subprocess.run([*M3W, "inspect", "stats", "s3://jobs/one", "--json"], cwd=REPO,
                           env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert (
        json.loads(stats.stdout)["docs"]
        == json.loads((local / "report.json").read_text())["documents"]
    )


def test_train_streams_the_shards_by_url(built, tmp_path):
    from pipelines.demo import synthetic, tiny

    fs, env, _ = built
    names = [json.loads(x)["name"] for x in fs.cat("jobs/one/manifest.jsonl").decode().splitlines()]
    tokenizer = tiny.train_tokenizer(
        [synthetic.synthetic_document(i).text() for i in range(32)], 300
    )
    lm, vision = tiny.save_tiny_models(tmp_path / "models", tokenizer)
    pattern = f"s3://jobs/one/shards/{{000000..{len(names) - 1:06d}}}.tar"
    config = {
        "model": {"lm": str(lm), "vision": str(vision), "flamingo": tiny.TINY_FLAMINGO},
        "data": [{"shards": pattern, "batch_size": 2, "seq_len": 48, "num_workers": 0}],
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "run": {"out": str(tmp_path / "run"), "steps": 2, "progress": False, "device": "cpu"},
    }
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.run([*M3W, "train", "--config", str(tmp_path / "t.yaml")], cwd=REPO,
                          env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary-train.json").read_text())
    assert summary["steps"] == 2
