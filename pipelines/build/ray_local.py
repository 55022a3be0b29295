"""Connect to a Ray cluster, or start a local Ray that stays on loopback.

Why this module: at start-up a local Ray looks for its node's LAN address by opening a UDP socket
towards a public resolver (8.8.8.8:53, `node_ip_address_from_perspective`), and advertises whatever it
finds. m3w's local Ray is one machine talking to itself, so it is told its node address is 127.0.0.1
and that it is not part of a multi-node cluster (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, Ray's own
single-node switch: with it Ray answers "which IP am I?" with the loopback address instead of probing).
Ray 2.60 turns `_node_ip_address="127.0.0.1"` back into a probed address unless that switch is off, so
both are set. The switch is read by Ray's Python side when `ray` is imported (so its module constant is set as
well) and by its C++ processes from their environment; both are set only while the local Ray starts
and restored afterwards, so a later `ray.init(address=...)` in the same process (a notebook) is not
affected. The processes started meanwhile (GCS, raylet, and the workers the raylet spawns) keep it.

What this does not stop: Ray's usage-stats module (loaded by the dashboard process even with
`include_dashboard=False`) asks cloud metadata endpoints (169.254.169.254, metadata.google.internal)
which cloud it runs on, before it reads `RAY_USAGE_STATS_ENABLED`. Only the process environment can
stop that (proxy variables pointing at a closed loopback port, or a network namespace): see
docs/build.md § The local Ray, the network, and offline machines. Token authentication stays on:
Ray's gRPC servers still listen on every interface, and the token is what guards them.

`--address` / `RAY_ADDRESS` (a real cluster) is passed to Ray unchanged.

Before a local Ray starts, what a SIGKILLed m3w driver left of its own local Ray (the raylet's agents
outlive it) is stopped, and the new session gets an owner file for the next time: pipelines/build/ray_stale.py.

Noise: Ray announces at every local start that token authentication is on ("Set RAY_AUTH_MODE=
disabled to opt out"). For m3w's own local Ray that is the expected state, so the note is shown
only at `--log-level INFO` or below; Ray's warning that authentication is *off* is never hidden.
Ray prefixes forwarded worker lines with ANSI colours; they are kept only when stderr is a
terminal (`RAY_COLOR_PREFIX=0` otherwise; a user's own setting wins).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
_SINGLE_NODE_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
# Defaults for the local Ray only; a user's own setting wins.
_LOCAL_DEFAULT_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}
# Proxy variables that send requests/urllib traffic to the discard port on loopback (nothing listens
# there, so a request fails at once); loopback itself is exempt.
_CLOSED_PROXY = "http://127.0.0.1:9"
CLOSED_PORT_PROXY_ENV = {
    **{name: _CLOSED_PROXY for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")},
    **{name: "localhost,127.0.0.1,::1" for name in ("no_proxy", "NO_PROXY")},
}


def init_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    *,
    log_to_driver: bool = True,
    loopback_only: bool = False,
) -> bool:
    """Connect to `address` (else `RAY_ADDRESS`), or start a local Ray on loopback; reuse a Ray
    already initialised in this process (tests, notebooks). Returns whether this call started or
    connected it (and so the caller must `ray.shutdown()` it).

    `loopback_only` (the demo, whose every byte comes from 127.0.0.1) also starts the local Ray's
    processes with the proxy variables pointing at a closed loopback port, so the usage-stats
    module's cloud-metadata requests fail at once on loopback. Its workers keep those variables:
    m3w's fetcher ignores them, but other HTTP clients in the workers would not reach the web."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    if not address:  # a local Ray: first stop what a killed m3w driver left of its own (ray_stale)
        from pipelines.build.ray_stale import stop_stale_local_rays

        stop_stale_local_rays()
    if ray.is_initialized():
        return False
    if not sys.stderr.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # read per forwarded line, so kept
    with (
        _single_node_env(enabled=not address, proxies=loopback_only),
        _quiet_auth_note(enabled=not address),
    ):
        kwargs: dict[str, Any] = {"log_to_driver": log_to_driver, "include_dashboard": False}
        if address:
            kwargs["address"] = address
        else:
            kwargs.update(local_ray_kwargs(num_cpus))
        ray.init(**kwargs)
    if not address:
        _mark_local_session()
    return True


def _mark_local_session() -> None:
    """The owner file ray_stale.py looks for, in the new local Ray's session folder."""
    from pipelines.build.ray_stale import mark_session

    try:
        from ray._private import worker

        session_dir = worker._global_node.get_session_dir_path()
    except (ImportError, AttributeError) as e:  # Ray's internals moved: only the clean-up is lost
        log.warning("cannot find the local Ray's session folder: %s", e)
        return
    mark_session(session_dir)


def local_ray_kwargs(num_cpus: int | None = None) -> dict[str, Any]:
    """`ray.init` arguments of a local Ray that stays on loopback: always a new local instance
    (`address="local"`, never a cluster already running on the machine) whose node is 127.0.0.1."""
    kwargs: dict[str, Any] = {"address": "local", "_node_ip_address": LOOPBACK}
    if num_cpus:
        kwargs["num_cpus"] = num_cpus
    return kwargs


_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


class _AuthEnabledNote(logging.Filter):
    """Drops Ray's "Token authentication is enabled" note below INFO (the secure default)."""

    def filter(self, record: logging.LogRecord) -> bool:
        note = "Token authentication is enabled for this Ray cluster" in record.getMessage()
        return not note or logging.getLogger().getEffectiveLevel() <= logging.INFO


@contextlib.contextmanager
def _quiet_auth_note(*, enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    note = _AuthEnabledNote()
    logger = logging.getLogger(_AUTH_LOGGER)
    logger.addFilter(note)
    try:
        yield
    finally:
        logger.removeFilter(note)


@contextlib.contextmanager
def _single_node_env(*, enabled: bool, proxies: bool = False) -> Iterator[None]:
    """Ray's single-node switch (and the local defaults, and with `proxies` the closed-port proxy
    variables) while a local Ray starts, then restored in this process."""
    if not enabled:
        yield
        return
    extra = CLOSED_PORT_PROXY_ENV if proxies else {}
    saved = {k: os.environ.get(k) for k in (*_SINGLE_NODE_ENV, *_LOCAL_DEFAULT_ENV, *extra)}
    os.environ.update(_SINGLE_NODE_ENV)
    os.environ.update(extra)
    for key, value in _LOCAL_DEFAULT_ENV.items():
        os.environ.setdefault(key, value)
    # Ray's Python side read the switch when `ray` was imported: set its constant too.
    from ray._private import ray_constants

    saved_constant = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        ray_constants.ENABLE_RAY_CLUSTER = saved_constant
