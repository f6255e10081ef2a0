"""The image's HEALTHCHECK: is the process in this container ready?

Asks ``GET /v2/health/ready`` (200 ready; 503 until ready and while draining)
of the balancer or worker in this container. The port is the balancer's or the
worker's, as the environment sets it (``AFFINITY_BALANCER_PORT``,
``AFFINITY_WORKER_PORT``, defaults 8000 and 8100): the first that accepts a
connection is the process to ask. Exit 0 when ready, 1 otherwise. Standard
library only, and quick: a probe runs every few seconds.
"""

from __future__ import annotations

import http.client
import os
import sys

ROLES = (("BALANCER", 8000), ("WORKER", 8100))
WILDCARDS = ("", "0.0.0.0", "::")
TIMEOUT = 2.0


def candidates(env: dict[str, str]) -> list[tuple[str, int]]:
    """``(host, port)`` of each role, as the container's environment configures it."""
    found = []
    for role, default in ROLES:
        host = env.get(f"AFFINITY_{role}_HOST", "")
        port = env.get(f"AFFINITY_{role}_PORT", "")
        found.append(("127.0.0.1" if host in WILDCARDS else host, int(port) if port.isdigit() else default))
    return found


def ready(host: str, port: int) -> bool | None:
    """True or False from the process's answer; None when nothing listens there."""
    conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    try:
        conn.connect()
    except OSError:
        return None
    try:
        conn.request("GET", "/v2/health/ready")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def main() -> int:
    for host, port in candidates(dict(os.environ)):
        answer = ready(host, port)
        if answer is not None:
            print(f"{host}:{port} {'ready' if answer else 'not ready'}")
            return 0 if answer else 1
    print("no balancer or worker listening")
    return 1


if __name__ == "__main__":
    sys.exit(main())
