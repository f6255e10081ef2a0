"""Shared helpers: singleflight, size units, flags with environment variables."""

from __future__ import annotations

import asyncio

import pytest

from cli.flags import env_name
from cli.main import build_parser
from common.singleflight import SingleFlight
from common.units import format_size, parse_size


def test_singleflight_runs_once_for_concurrent_callers() -> None:
    calls = 0

    async def work() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return 42

    async def main() -> list[tuple[int, bool]]:
        flight: SingleFlight[int] = SingleFlight()
        results = await asyncio.gather(*(flight.do("k", work()) for _ in range(50)))
        assert "k" not in flight, "the entry is removed when the work ends"
        return results

    results = asyncio.run(main())
    assert calls == 1
    assert [r for r, _ in results] == [42] * 50
    assert sum(1 for _, shared in results if not shared) == 1


def test_singleflight_shares_failures_and_starts_afresh_after() -> None:
    attempts = 0

    async def failing() -> int:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(0.01)
        raise ValueError("boom")

    async def main() -> None:
        flight: SingleFlight[int] = SingleFlight()
        results = await asyncio.gather(*(flight.do("k", failing()) for _ in range(5)), return_exceptions=True)
        assert all(isinstance(r, ValueError) for r in results)
        with pytest.raises(ValueError):
            await flight.do("k", failing())

    asyncio.run(main())
    assert attempts == 2


def test_a_cancelled_caller_does_not_cancel_the_shared_work() -> None:
    async def work() -> str:
        await asyncio.sleep(0.05)
        return "done"

    async def main() -> str:
        flight: SingleFlight[str] = SingleFlight()
        leader = asyncio.create_task(flight.do("k", work()))
        await asyncio.sleep(0)
        follower = asyncio.create_task(flight.do("k", work()))
        await asyncio.sleep(0.01)
        leader.cancel()
        result, shared = await follower
        assert shared
        return result

    assert asyncio.run(main()) == "done"


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512MiB", 512 << 20),
        ("4GiB", 4 << 30),
        ("10MB", 10_000_000),
        ("1024", 1024),
        ("1.5KiB", 1536),
        ("2 gb", 2 * 10**9),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["", "MiB", "-1", "5 parsecs", "1e9"])
def test_parse_size_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(bad)


def test_format_size() -> None:
    assert format_size(1536) == "1.5KiB" and format_size(3 << 30) == "3.0GiB"


def test_each_flag_has_its_own_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert env_name("balancer", "--port") == "AFFINITY_BALANCER_PORT"
    assert env_name("up", "--workers") == "AFFINITY_UP_WORKERS"
    monkeypatch.setenv("AFFINITY_BALANCER_PORT", "9123")
    monkeypatch.setenv("AFFINITY_BALANCER_CACHE_SIZE", "1MiB")
    monkeypatch.setenv("AFFINITY_WORKER_PORT", "9999")
    args = build_parser().parse_args(["balancer", "--workers", "h:1"])
    assert args.port == 9123 and args.cache_size == 1 << 20
    assert build_parser().parse_args(["balancer", "--workers", "h:1", "--port", "1"]).port == 1
    monkeypatch.setenv("AFFINITY_WORKER_MODELS", "/tmp")
    assert build_parser().parse_args(["worker"]).port == 9999


def test_bad_flag_values_are_clear_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["balancer", "--workers", "h:1", "--cache-size", "lots"])
    assert "invalid size" in capsys.readouterr().err


def test_admin_token_check() -> None:
    from common.auth import admin_headers, check_admin
    from protocol.errors import Unauthorized

    check_admin({}, None)  # no token configured: open (the process is loopback-bound)
    check_admin({"authorization": "Bearer s3cret"}, "s3cret")
    check_admin({k.lower(): v for k, v in admin_headers("s3cret").items()}, "s3cret")
    for headers in (
        {},
        {"authorization": "Bearer wrong"},
        {"authorization": "s3cret"},
        {"authorization": "Basic s3cret"},
    ):
        with pytest.raises(Unauthorized):
            check_admin(headers, "s3cret")


def test_cpu_lists_and_worker_shares() -> None:
    from cli.up import worker_cpus
    from common.process import parse_cpus

    assert parse_cpus("0") == {0} and parse_cpus("0-3,6") == {0, 1, 2, 3, 6}
    for bad in ("", "a", "1-", "-1", "0,,1"):
        with pytest.raises(ValueError, match="CPU list"):
            parse_cpus(bad)
    assert [worker_cpus(i, 2, 2) for i in range(2)] == ["0", "1"]
    assert [worker_cpus(i, 2, 8) for i in range(2)] == ["0-3", "4-7"]
    assert [worker_cpus(i, 3, 2) for i in range(3)] == ["0", "1", "0"], "more workers than cores share them"


def test_free_ports_are_below_the_ephemeral_range_and_never_handed_out_twice() -> None:
    """An outgoing connection takes its local port from the ephemeral range: a port a
    child is about to listen on must not come from there (CI once lost a worker to a
    client socket that took its port first)."""
    import socket

    from common.process import LOWEST_PORT, _ephemeral_low, free_port

    low = _ephemeral_low()
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    if low - LOWEST_PORT >= 1024:
        assert all(LOWEST_PORT <= p < low for p in ports), (low, min(ports), max(ports))
    for port in ports[:5]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
