"""Find and stop what a killed m3w process left of its local Ray.

Why: a local Ray's GCS, raylet and workers die with the driver that started them (Ray starts them
with the kernel's parent-death signal), but the raylet's agents (`ray::DashboardAgent`,
`ray::RuntimeEnvAgent`) do not: after a SIGKILL of the driver alone (`kill -9`, the OOM killer) they
stay, re-parented to init, holding memory and ports, forever. Every local Ray m3w starts gets an owner
file in its session folder (`m3w_owner.json`: the driver's pid and start time, written right after
`ray.init`); before the next local Ray starts, `stop_stale_local_rays` looks at those files, and for
each session whose owner is gone (pid dead, or reused: another start time) it stops the processes that
still hold files of that session folder open (SIGTERM, then SIGKILL after a grace period). Sessions of a
live driver (a concurrent build, a test run) and sessions m3w did not start are never touched. A process
it may not signal (another user's) makes it refuse with the `kill` command that would stop it.

Linux only (it reads /proc); elsewhere it finds nothing. Not covered: a driver killed in the instant
between `ray.init` returning and the owner file being written.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from m3w_builder.atomic import atomic_write
from m3w_builder.errors import RunFailed

log = logging.getLogger(__name__)

OWNER_FILE = "m3w_owner.json"
STOPPED_FILE = "m3w_owner.stopped.json"
_PROC = Path("/proc")
GRACE_S = 5.0  # between SIGTERM and SIGKILL


def ray_temp_root() -> Path:
    """Where Ray puts its session folders (ray/_common/utils.get_default_ray_temp_dir)."""
    if "RAY_TMPDIR" in os.environ:
        base = os.environ["RAY_TMPDIR"]
    elif sys.platform.startswith("linux") and "TMPDIR" in os.environ:
        base = os.environ["TMPDIR"]
    else:
        base = "/tmp"
    return Path(base) / "ray"


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22): with the pid it
    names one process for good, even after the pid is reused. None if there is no such process."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # the command name may hold spaces and ')'
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def mark_session(session_dir: str | Path) -> None:
    """Record this process as the owner of the local Ray session in `session_dir`."""
    owner = {"pid": os.getpid(), "start": process_start(os.getpid()), "argv": sys.argv[:6]}
    path = Path(session_dir) / OWNER_FILE
    try:
        atomic_write(path, json.dumps(owner).encode())
    except OSError as e:  # the build goes on; only the clean-up after a kill is lost
        log.warning("cannot record the local Ray's owner in %s: %s", session_dir, e)


@dataclass(slots=True)
class StaleRay:
    """A session whose owner is gone, and the processes still holding its files open."""

    session: Path
    owner_pid: int
    pids: list[int] = field(default_factory=list)


def _owner_alive(owner: dict) -> bool:
    pid, start = owner.get("pid"), owner.get("start")
    if not isinstance(pid, int):
        return False
    now = process_start(pid)
    return now is not None and (start is None or now == start)


def session_pids(session: Path) -> list[int]:
    """Processes (of any user we may inspect) with a file under `session` open; not this one."""
    prefix = os.path.realpath(session) + os.sep
    found = []
    try:
        entries = list(_PROC.iterdir())
    except OSError:
        return []
    for entry in entries:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:  # gone, or not ours to inspect
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith(prefix):
                found.append(int(entry.name))
                break
    return sorted(found)


def find_stale_local_rays(root: Path | None = None) -> list[StaleRay]:
    """Sessions under `root` (Ray's temp folder) that an m3w process started and that outlived it.
    A session whose owner is gone and nothing holds open is marked stopped and not looked at again."""
    root = root or ray_temp_root()
    if not _PROC.is_dir() or not root.is_dir():
        return []
    stale = []
    for marker in sorted(root.glob(f"session_*/{OWNER_FILE}")):
        try:
            owner = json.loads(marker.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(owner, dict) or _owner_alive(owner):
            continue
        pids = session_pids(marker.parent)
        if not pids:
            _retire(marker)
            continue
        stale.append(StaleRay(marker.parent, int(owner.get("pid", -1)), pids))
    return stale


def _retire(marker: Path) -> None:
    try:
        os.replace(marker, marker.with_name(STOPPED_FILE))
    except OSError:
        pass


def is_running(pid: int) -> bool:
    """Running (a zombie, exited and waiting to be reaped, holds nothing and counts as gone)."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :][:1] not in ("Z", "X")


def _signal_all(pids: list[int], sig: int) -> list[int]:
    """Send `sig`; return the pids we may not signal."""
    denied = []
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            denied.append(pid)
    return denied


def stop(stale: StaleRay, grace_s: float = GRACE_S) -> list[int]:
    """SIGTERM the session's processes, SIGKILL what is left after `grace_s`; returns the pids still
    running (ones we may not signal)."""
    pids = [p for p in session_pids(stale.session) if p in stale.pids]  # still the same ones
    denied = _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(is_running(p) for p in pids if p not in denied):
        time.sleep(0.1)
    denied += _signal_all([p for p in pids if p not in denied and is_running(p)], signal.SIGKILL)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and any(is_running(p) for p in pids if p not in denied):
        time.sleep(0.05)
    return sorted({p for p in pids if is_running(p)})


def stop_stale_local_rays(root: Path | None = None) -> list[StaleRay]:
    """Stop every local Ray a dead m3w process left running (module doc); returns what was stopped.
    Raises RunFailed naming the command to run when a process cannot be stopped from here."""
    stopped = []
    for stale in find_stale_local_rays(root):
        log.warning(
            "stopping a local Ray left running by m3w process %d, which is gone (session %s): "
            "processes %s",
            stale.owner_pid,
            stale.session,
            " ".join(map(str, stale.pids)),
        )
        left = stop(stale)
        if left:
            raise RunFailed(
                f"a local Ray left by a killed m3w process (session {stale.session}) is still "
                f"running and cannot be stopped from here; stop it with: kill {' '.join(map(str, left))}"
            )
        _retire(stale.session / OWNER_FILE)
        stopped.append(stale)
    return stopped
