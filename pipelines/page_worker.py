"""Run the per-page recipe in a child process that can be killed at a deadline.

Why a process: libxml2 is C code that holds the GIL, and one call can run for minutes on a hostile
page (one element with 300,000 attributes: > 300 s), past every cooperative deadline check of
`m3w_builder.extract` and out of reach of signals, which Python only handles between bytecodes. The
build kills such a worker with faulthandler's watchdog and lets Ray retry the unit
(pipelines/build/stages.py); a command with no Ray to retry (`m3w extract`) gets the same protection
from this class: the parent sends one page at a time over a pipe, waits at most `kill_timeout_s`
for the answer, and on silence kills the child (`html.parse_timeout`) or, if the child died on its
own (a crash in C code, the kernel's OOM killer), reports `html.parse_crash`; either way the next
page goes to a fresh child. The default deadline is the build's, 3 × `sources.parse_timeout_s` + 5.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
from typing import Any

from m3w_builder.config import BuildConfig
from m3w_builder.document import RawPage

_START_TIMEOUT_S = 300  # a cold interpreter importing lxml and friends on a loaded machine


def default_kill_timeout(config: BuildConfig) -> float:
    """The build's per-page hard limit (pipelines/build/job.py): room for the cooperative deadline."""
    return 3 * config.sources.parse_timeout_s + 5


def _serve(conn: multiprocessing.connection.Connection, config: BuildConfig, filt: bool) -> None:
    """The child: page in, `page_json` out, until the parent sends None or goes away."""
    from pipelines.extract import page_json

    conn.send("ready")  # imports done: the parent's deadline counts parsing only
    while True:
        try:
            page = conn.recv()
        except EOFError:
            return
        if page is None:
            return
        conn.send(page_json(page, config, filt))


class PageWorker:
    """`run(page)` → `pipelines.extract.page_json(page)`, computed in a killable child process."""

    def __init__(self, config: BuildConfig, filter_text: bool, kill_timeout_s: float) -> None:
        self.config = config
        self.filter_text = filter_text
        self.kill_timeout_s = kill_timeout_s
        # spawn: a fresh interpreter, no inherited locks or threads (a fork of a process that
        # holds a lock in another thread can deadlock the child)
        self._ctx = multiprocessing.get_context("spawn")
        self._proc: Any = None
        self._conn: multiprocessing.connection.Connection | None = None
        self.killed = 0  # children killed at the deadline
        self.crashed = 0  # children that died by themselves

    def __enter__(self) -> PageWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(
            target=_serve, args=(child, self.config, self.filter_text), daemon=True
        )
        self._proc.start()
        child.close()
        self._conn = parent
        if not parent.poll(_START_TIMEOUT_S) or parent.recv() != "ready":
            self._stop(kill=True)
            raise RuntimeError(f"the page parser process did not start in {_START_TIMEOUT_S} s")

    def _stop(self, kill: bool) -> None:
        if self._proc is None:
            return
        if not kill:
            self._proc.join(timeout=5)  # it exits on the None sent by close()
        if kill or self._proc.is_alive():
            self._proc.kill()
        self._proc.join(timeout=30)
        if self._conn is not None:
            self._conn.close()
        self._proc, self._conn = None, None

    def run(self, page: RawPage) -> dict[str, Any]:
        if self._proc is None:
            self._start()
        assert self._conn is not None
        where = f"{page.source_file or '-'}@{page.source_offset} {page.url}"
        try:
            self._conn.send(page)
            if self._conn.poll(self.kill_timeout_s):
                return self._conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            code = self._proc.exitcode if self._proc is not None else None
            self._stop(kill=True)
            self.crashed += 1
            detail = f"{where}: the parser process died (exit code {code})"
            return {"url": page.url, "dropped": "html.parse_crash", "detail": detail}
        self._stop(kill=True)
        self.killed += 1
        detail = f"{where}: killed after {self.kill_timeout_s:g} s"
        return {"url": page.url, "dropped": "html.parse_timeout", "detail": detail}

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        self._stop(kill=False)
