"""Every `affinity` command and subcommand leads somewhere: a leaf of the parser
tree without a ``run`` would parse its flags and then fail with an AttributeError
(as `affinity bench soak` once did)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from cli.main import build_parser


def _leaves(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield " ".join(path), parser
        return
    for action in subs:
        for name, child in action.choices.items():
            yield from _leaves(child, (*path, name))


def test_every_command_has_something_to_run() -> None:
    leaves = dict(_leaves(build_parser()))
    assert {"up", "balancer", "worker", "loadgen", "bench soak", "bench throughput", "models add"} <= set(leaves)
    missing = [name for name, parser in leaves.items() if not callable(parser.get_default("run"))]
    assert missing == []
