"""strace helpers for the loopback-only tests: is tracing possible here, and which IPv4/IPv6
destinations in a trace are not loopback."""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess

# strace's rendering of a socket address: `sin_addr=inet_addr("1.2.3.4")` (AF_INET) and
# `inet_pton(AF_INET6, "::1", &sin6_addr)` (AF_INET6).
_INET = re.compile(r'sa_family=AF_INET, sin_port=htons\((\d+)\), sin_addr=inet_addr\("([^"]+)"\)')
_INET6 = re.compile(
    r'sa_family=AF_INET6, sin6_port=htons\((\d+)\),.*?inet_pton\(AF_INET6, "([^"]+)"'
)


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def outside_destinations(strace_log: str) -> list[str]:
    """`address:port (syscall line)` for every IPv4/IPv6 destination that is not loopback."""
    found = []
    for line in strace_log.splitlines():
        for pattern in (_INET, _INET6):
            for port, address in pattern.findall(line):
                if not is_loopback(address):
                    found.append(f"{address}:{port}  ({line.strip()[:160]})")
    return found


def strace_problem() -> str | None:
    """None if `strace -f` can trace here, else why not (missing, or ptrace not permitted)."""
    if shutil.which("strace") is None:
        return "strace is not installed (apt-get install strace)"
    proc = subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=connect", "true"], capture_output=True, text=True
    )
    if proc.returncode != 0:
        return f"strace cannot trace here: {proc.stderr.strip()[:200]}"
    return None
