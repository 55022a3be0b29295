"""pipelines/ray_stale.py without Ray (issue 14 §7): real processes holding a session folder's files
open stand in for the agents a killed driver's local Ray leaves behind. The real thing (a SIGKILLed
`m3w build`) is tests/test_build.py's driver-kill test."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines import ray_stale

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux /proc")

HOLDER = "import sys, time; f = open(sys.argv[1], 'a'); print('ready', flush=True); time.sleep(600)"


def _holder(path: Path) -> subprocess.Popen:
    """A process that keeps `path` open, like an agent keeps its session's log files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"ready"
    return proc


def _dead_pid() -> tuple[int, int | None]:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    start = ray_stale.process_start(proc.pid)
    proc.wait()
    return proc.pid, start


def _session(root: Path, name: str, owner: dict) -> Path:
    session = root / f"session_{name}"
    (session / "logs").mkdir(parents=True)
    (session / ray_stale.OWNER_FILE).write_text(json.dumps(owner))
    return session


def test_a_dead_owners_session_is_stopped_and_a_live_ones_is_not(tmp_path):
    pid, start = _dead_pid()
    dead = _session(tmp_path, "dead", {"pid": pid, "start": start})
    live = _session(tmp_path, "live", {"pid": 1, "start": ray_stale.process_start(1)})
    foreign = tmp_path / "session_foreign"  # no owner file: not started by m3w
    agents = [_holder(dead / "logs" / "agent.out"), _holder(dead / "logs" / "runtime.err")]
    bystanders = [_holder(live / "logs" / "agent.out"), _holder(foreign / "logs" / "x.out")]
    try:
        [stale] = ray_stale.find_stale_local_rays(tmp_path)
        assert stale.session == dead and stale.pids == sorted(p.pid for p in agents)
        stopped = ray_stale.stop_stale_local_rays(tmp_path)
        assert [s.session for s in stopped] == [dead]
        for proc in agents:
            assert proc.wait(timeout=10) is not None
        assert all(proc.poll() is None for proc in bystanders)
        assert (dead / ray_stale.STOPPED_FILE).exists()  # not looked at again
        assert ray_stale.find_stale_local_rays(tmp_path) == []
    finally:
        for proc in agents + bystanders:
            proc.kill()
            proc.wait()


def test_a_reused_pid_does_not_make_a_dead_owner_alive(tmp_path):
    """The owner file holds the start time: a new process under the same pid is someone else."""
    me = ray_stale.process_start(1)
    session = _session(tmp_path, "reused", {"pid": 1, "start": (me or 0) + 12345})
    agent = _holder(session / "logs" / "agent.out")
    try:
        [stale] = ray_stale.find_stale_local_rays(tmp_path)
        assert stale.pids == [agent.pid]
    finally:
        agent.kill()
        agent.wait()


def test_an_agent_that_ignores_sigterm_is_killed(tmp_path):
    pid, start = _dead_pid()
    session = _session(tmp_path, "stubborn", {"pid": pid, "start": start})
    code = (
        "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "f = open(sys.argv[1], 'a'); print('ready', flush=True); time.sleep(600)"
    )
    (session / "logs").mkdir(exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(session / "logs" / "a.out")], stdout=subprocess.PIPE
    )
    assert proc.stdout.readline().strip() == b"ready"
    try:
        started = time.monotonic()
        ray_stale.stop_stale_local_rays(tmp_path)
        assert proc.wait(timeout=15) == -9
        assert time.monotonic() - started < ray_stale.GRACE_S + 5
    finally:
        proc.kill()
        proc.wait()
