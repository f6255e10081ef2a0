"""``affinity balancer --processes N``: N balancers on one port, metrics added up."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.chaos_load import migrate_queued_connections
from tests.harness import Server, request, start_balancer, wait_until
from tests.metrics_text import metric_sum
from tests.reference import infer_body, sample_inputs


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry))
    return found


def listening(front: Server, count: int) -> bool:
    """Every process listens (each publishes its metrics once it does)."""
    text = request(front.url, "GET", "/metrics").body.decode()
    return metric_sum(text, "affinity_processes") == count and len(balancers_of(front)) == count


def balancers_of(supervisor: Server) -> list[int]:
    """The supervisor's balancer children (each has its own cache-key process below it);
    a child that exits between the listing and the reading of its command line is gone."""
    found = []
    for child in children(supervisor.proc.pid):
        try:
            if "balancer" in Path(f"/proc/{child}/cmdline").read_text():
                found.append(child)
        except OSError:  # ProcessLookupError, FileNotFoundError: it exited meanwhile
            continue
    return found


def test_two_processes_share_the_port_and_add_up_their_metrics(workers: list[Server], zoo: Path, logdir: Path) -> None:
    """Each process has its own in-process cache: the same request sent on 40 new
    connections (spread by the kernel) misses once in each process, and /metrics,
    whichever process answers it, counts both processes' requests."""
    front = start_balancer(workers, logdir, "--processes", "2").wait_ready()
    try:
        wait_until(lambda: listening(front, 2), 20, 0.2)
        body = infer_body(sample_inputs(zoo, "logreg-03", 1, seed=70_001))
        states = [request(front.url, "POST", "/v2/models/logreg-03/infer", body).headers["x-cache"] for _ in range(40)]
        assert states.count("miss") == 2 and states.count("hit") == 38, "two processes, one cache each"

        def counted() -> bool:
            text = request(front.url, "GET", "/metrics").body.decode()
            hits = metric_sum(text, "affinity_requests_total", role="balancer", model="logreg-03", cache="hit")
            misses = metric_sum(text, "affinity_cache_misses_total", model="logreg-03")
            return hits == 38 and misses == 2

        wait_until(counted, 10, 0.2)  # snapshots are published once a second
    finally:
        front.proc.stop()
    assert front.proc.popen is not None and front.proc.popen.returncode == 0
    assert not balancers_of(front)


def test_a_process_stopped_alone_is_replaced_and_requests_keep_flowing(
    workers: list[Server], zoo: Path, logdir: Path
) -> None:
    front = start_balancer(workers, logdir, "--processes", "2").wait_ready()
    try:
        wait_until(lambda: listening(front, 2), 20, 0.2)
        old = balancers_of(front)
        # A connection still queued in the closing listener is reset unless the kernel
        # moves it to the sibling's (tcp_migrate_req, set where allowed, as a rolling
        # restart should run; tests/test_chaos_load.py counts what happens without it).
        with migrate_queued_connections():
            os.kill(old[0], signal.SIGTERM)  # a rolling restart of one process
            statuses = []
            for seed in range(60):
                body = infer_body(sample_inputs(zoo, "mlp-00", 1, seed=80_000 + seed))
                statuses.append(request(front.url, "POST", "/v2/models/mlp-00/infer", body).status)
        assert statuses == [200] * 60
        wait_until(lambda: old[0] not in balancers_of(front) and listening(front, 2), 20, 0.2)
        assert old[1] in balancers_of(front), "the other process kept running"
    finally:
        front.proc.stop()


def test_a_closing_listener_counts_the_connections_still_queued_in_it() -> None:
    """What a dying balancer process logs (``listener closed with N connection(s)
    still queued``): the kernel's accept queue, read from TCP_INFO."""
    import socket

    from common.http_server import queued_connections

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        clients = [socket.create_connection(listener.getsockname()) for _ in range(3)]
        try:
            wait_until(lambda: queued_connections(listener) == 3, 5, 0.01)
            accepted, _ = listener.accept()
            accepted.close()
            assert queued_connections(listener) == 2
        finally:
            for c in clients:
                c.close()
