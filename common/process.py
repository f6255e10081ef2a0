"""Child processes on loopback: free ports, spawning, readiness, stopping.

Used by ``affinity up`` (the local cluster) and by the tests' harness, so both
start and stop processes the same way: explicit flags, an environment without
``AFFINITY_*`` variables (one variable never reaches a child it was not meant
for), the kernel's parent-death signal (no orphans), SIGTERM then SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import IO

READY_TIMEOUT = 120.0
STOP_TIMEOUT = 15.0


EPHEMERAL_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"
LOWEST_PORT = 10000  # below the ephemeral range, but above the well-known services' ports
_handed: dict[int, None] = {}  # ports this process handed out lately, oldest first
_HANDED_LIMIT = 4096
_random = random.Random()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing is bound to now, for a child process to listen on.

    Taken below the system's ephemeral range where there is room: the kernel
    gives every outgoing connection a local port from that range, so a port
    chosen inside it (what binding to port 0 gives) can be taken by a client
    socket before the child binds it, and the child fails with "address already
    in use" (seen in CI under load). A port handed out lately is not handed out
    again."""
    low = _ephemeral_low()
    if low - LOWEST_PORT >= 1024:
        for _ in range(200):
            port = _random.randrange(LOWEST_PORT, low)
            if port not in _handed and _bindable(host, port):
                return _hand(port)
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _handed:
            break
    return _hand(port)


def _ephemeral_low() -> int:
    try:
        with open(EPHEMERAL_RANGE) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _hand(port: int) -> int:
    _handed[port] = None
    if len(_handed) > _HANDED_LIMIT:
        del _handed[next(iter(_handed))]
    return port


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            raise RuntimeError(
                f"port {port} on {host} is in use: pick another with --port (0: any free port)"
            ) from None


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent exits (Linux prctl)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def affinity_command(*args: str) -> list[str]:
    """The command line of ``affinity <args>`` run by this interpreter."""
    return [sys.executable, "-m", "cli", *args]


def spawn(
    args: list[str],
    output: IO[bytes] | None = None,
    new_session: bool = True,
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a child with a clean environment that dies with this process.

    ``new_session``: a terminal's Ctrl-C reaches only the parent, which stops
    its children in order. ``extra_env``: variables handed on explicitly (a
    secret such as the admin token, which must not appear on a command line)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFFINITY_")}
    env.update(extra_env or {})
    env["PYTHONUNBUFFERED"] = "1"
    return subprocess.Popen(
        args,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT if output is not None else None,
        start_new_session=new_session,
        preexec_fn=_die_with_parent,  # noqa: PLW1509 - the parent starts no threads before this
    )


def http_status(url: str, body: bytes | None = None, timeout: float = 1.0) -> int | None:
    """The status of a GET (or a JSON POST when ``body`` is given), None if unreachable."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    req = urllib.request.Request(url, data=body, headers=headers)  # noqa: S310 - our own http:// URL
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - our own http:// URL
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return None


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = READY_TIMEOUT) -> None:
    """Poll ``url`` until it answers 200; fail early if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode} before it was ready")
        if http_status(url) == 200:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{url} was not ready after {timeout:.0f}s")


def stop(procs: Iterable[subprocess.Popen[bytes]], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM every live process, wait up to ``timeout`` in all, SIGKILL stragglers."""
    group = [p for p in procs if p.poll() is None]
    for proc in group:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in group:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def parse_cpus(text: str) -> frozenset[int]:
    """A CPU list as Linux writes it (``0``, ``0-3``, ``0,2``); ValueError otherwise."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"invalid CPU list {text!r}: use numbers and ranges such as 0-3,6")
        cpus.update(range(int(first), int(last if dash else first) + 1))
    return frozenset(cpus)


def pin_to(cpus: frozenset[int]) -> None:
    """Run this process (every thread it starts from now on) on ``cpus`` only."""
    os.sched_setaffinity(0, cpus)
