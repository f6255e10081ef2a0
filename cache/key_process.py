"""Cache keys of large bodies, derived in a process of its own.

Parsing a 4 MiB JSON body and packing its tensors takes tens of milliseconds
holding the GIL; in the balancer that would stop its event loop (and in a thread
too: a thread holding the GIL stops the loop just the same). So a child
process does it, fed over a pipe by the event loop itself: the body goes out in
the pipe's own chunk size as the pipe drains, nothing is pickled, and no thread
of ours touches it. ``ProcessPoolExecutor`` was measured first and stalled the
loop for milliseconds per large body while its helper threads pickled it.

Wire format, both ways: a 4-byte little-endian length, then that many bytes.
Request: the length-framed JSON ``[namespace, model, version, weights]`` and the
body. Answer: JSON ``["ok", key, request_id, [binary_default, overrides]]`` (the
answer encoding the body asks for) or ``["error", status, message]``.
Answers come in request order.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import sys
from collections import deque

import orjson

from cache.keys import KeyScope, key_from_json_body
from protocol.binary_codec import OutputEncoding
from protocol.errors import ProtocolError, Unavailable, error_for_status

log = logging.getLogger(__name__)

_LEN = struct.Struct("<I")


def _serve() -> None:
    """The child: read requests from stdin, answer on stdout, until stdin closes."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = stdin.read(4)
        if len(head) < 4:
            return
        scope_raw = stdin.read(_LEN.unpack(head)[0])
        (size,) = _LEN.unpack(stdin.read(4))
        body = stdin.read(size)
        try:
            namespace, model, version, weights = orjson.loads(scope_raw)
            scope = KeyScope(model, version, weights, namespace)  # the wire's order is not the fields' order
            key, request_id, encoding = key_from_json_body(body, scope)
            answer = orjson.dumps(["ok", key, request_id, [encoding.binary_default, encoding.overrides]])
        except ProtocolError as exc:
            answer = orjson.dumps(["error", exc.status, exc.message])
        except Exception as exc:  # a bug, not bad input: say so, keep serving
            answer = orjson.dumps(["error", 500, f"cache key derivation failed ({type(exc).__name__})"])
        stdout.write(_LEN.pack(len(answer)) + answer)
        stdout.flush()


def _lower_priority() -> None:
    """In the child: background work. When it competes with the balancer for a core,
    the balancer's event loop (answering every request) should win."""
    os.nice(10)


class KeyProcess:
    """The balancer's side: ``await derive(body, scope)`` -> (key, request id, answer encoding)."""

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._waiting: deque[asyncio.Future[tuple[str, str | None, OutputEncoding]]] = deque()
        self._reader: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()
        self._closing = False

    async def start(self) -> None:
        async with self._starting:
            if self._proc is not None and self._proc.returncode is None:
                return
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "cache.key_process",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                preexec_fn=_lower_priority,
            )
            self._reader = asyncio.get_running_loop().create_task(self._read(self._proc))

    async def derive(self, body: bytes, scope: KeyScope) -> tuple[str, str | None, OutputEncoding]:
        if self._proc is None or self._proc.returncode is not None:
            await self.start()
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        future: asyncio.Future[tuple[str, str | None, OutputEncoding]] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        scope_raw = orjson.dumps([scope.namespace, scope.model, scope.version, scope.weights])
        proc.stdin.write(_LEN.pack(len(scope_raw)) + scope_raw + _LEN.pack(len(body)))
        proc.stdin.write(body)
        await proc.stdin.drain()
        return await future

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        try:
            while True:
                (size,) = _LEN.unpack(await proc.stdout.readexactly(4))
                kind, first, second, *rest = orjson.loads(await proc.stdout.readexactly(size))
                future = self._waiting.popleft()
                if future.done():
                    continue
                if kind == "ok":
                    default, overrides = rest[0]
                    encoding = OutputEncoding(bool(default), tuple((str(n), bool(c)) for n, c in overrides))
                    future.set_result((first, second, encoding))
                else:
                    future.set_exception(error_for_status(int(first), str(second)))
        except (asyncio.IncompleteReadError, ConnectionError):
            if not self._closing:
                log.warning("the cache key process exited; the next large body starts another")
        finally:
            while self._waiting:
                waiting = self._waiting.popleft()
                if not waiting.done():
                    waiting.set_exception(Unavailable("the cache key process exited; try again"))

    async def close(self) -> None:
        proc = self._proc
        if proc is None:
            return
        self._closing = True
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


if __name__ == "__main__":
    _serve()
