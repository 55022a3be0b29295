"""pipelines/build/ray_stale.py without Ray (issue 14 §7): real processes holding a session folder's files
open stand in for the agents a killed driver's local Ray leaves behind. The real thing (a SIGKILLed
`m3w build`) is tests/test_build.py's driver-kill test."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from m3w_builder.errors import RunFailed
from pipelines.build import ray_stale

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


@pytest.mark.slow
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


def _deny(monkeypatch, pids: set[int]) -> set[int]:
    """os.kill raises PermissionError for `pids` (as for another user's processes: the tests may
    run as root, who may signal anything) until the returned set is emptied."""
    import os

    real_kill = os.kill

    def kill(pid: int, sig: int) -> None:
        if pid in pids:
            raise PermissionError(1, "Operation not permitted")
        real_kill(pid, sig)

    monkeypatch.setattr(os, "kill", kill)
    return pids


def test_an_agent_that_cannot_be_stopped_is_a_one_line_refusal_naming_the_kill(
    tmp_path, monkeypatch
):
    """A stale agent we may not signal (another user's): stop what can be stopped, then refuse
    with the `kill` command for the rest; the session stays marked, so the next build refuses
    again until the user has run it, and then goes on."""
    pid, start = _dead_pid()
    session = _session(tmp_path, "theirs", {"pid": pid, "start": start})
    theirs = _holder(session / "logs" / "agent.out")
    ours = _holder(session / "logs" / "runtime.err")
    denied = _deny(monkeypatch, {theirs.pid})
    try:
        with pytest.raises(RunFailed) as refused:
            ray_stale.stop_stale_local_rays(tmp_path)
        message = str(refused.value)
        assert isinstance(message, str) and "\n" not in message
        assert str(session) in message and message.endswith(f"stop it with: kill {theirs.pid}")
        assert ours.wait(timeout=10) is not None  # the one we may signal was stopped
        assert theirs.poll() is None  # the other one was left alone, and named
        assert (session / ray_stale.OWNER_FILE).exists()
        assert not (session / ray_stale.STOPPED_FILE).exists()
        with pytest.raises(RunFailed):  # not forgotten: refused again
            ray_stale.stop_stale_local_rays(tmp_path)
        denied.clear()  # the user runs the command (as whoever may)
        theirs.kill()
        theirs.wait()
        assert ray_stale.stop_stale_local_rays(tmp_path) == []
        assert (session / ray_stale.STOPPED_FILE).exists()
    finally:
        denied.clear()
        for proc in (theirs, ours):
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_m3w_build_refuses_before_starting_a_ray_it_cannot_clean_up_for(tmp_path):
    """The refusal as the user sees it: `m3w build` (the real CLI, a local Ray) exits non-zero with
    the one-line refusal last on stderr, no traceback, and no Ray started."""
    import os
    import shutil
    import tempfile

    repo = Path(__file__).resolve().parents[1]
    # a short RAY_TMPDIR: were Ray started after all, its socket paths must fit AF_UNIX's 107 bytes
    ray_tmp = Path(tempfile.mkdtemp(prefix="m3w-", dir="/tmp"))
    pid, start = _dead_pid()
    session = _session(ray_tmp / "ray", "theirs", {"pid": pid, "start": start})
    theirs = _holder(session / "logs" / "agent.out")
    (tmp_path / "page.html").write_text("<html><body><p>" + "word " * 80 + "</p></body></html>")
    code = (
        "import os, sys; real = os.kill\n"
        "def kill(pid, sig):\n"
        f"    if pid == {theirs.pid}: raise PermissionError(1, 'Operation not permitted')\n"
        "    real(pid, sig)\n"
        "os.kill = kill\n"
        "from pipelines.cli import main\n"
        "raise SystemExit(main(sys.argv[1:]))\n"
    )
    try:
        result = subprocess.run(
            [sys.executable, "-c", code, "build", "page.html", "--out", "job", "--num-cpus", "1",
             "--no-progress"],
            capture_output=True, text=True, cwd=tmp_path, timeout=120,
            env={**os.environ, "PYTHONPATH": str(repo), "RAY_TMPDIR": str(ray_tmp)},
        )  # fmt: skip
        assert result.returncode == 1, result.stderr  # RunFailed: fix it, run the same again
        err = result.stderr.strip()
        assert "Traceback" not in err, err
        last = err.splitlines()[-1]
        assert last.startswith("m3w build: error: a local Ray left by a killed m3w process"), err
        assert str(session) in last and last.endswith(f"stop it with: kill {theirs.pid}")
        assert "Started a local Ray" not in err
        assert [p.name for p in (ray_tmp / "ray").iterdir()] == [session.name]  # no new session
        assert theirs.poll() is None
    finally:
        theirs.kill()
        theirs.wait()
        shutil.rmtree(ray_tmp, ignore_errors=True)
