"""Flags with an environment variable each, named for their command.

``--port`` of ``affinity balancer`` reads ``AFFINITY_BALANCER_PORT`` when not
given, so one variable never means two things. The environment is read when
the parser is built (at command start), never at import time.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from common.units import parse_size


def env_name(command: str, flag: str) -> str:
    return f"AFFINITY_{command}_{flag.lstrip('-')}".upper().replace("-", "_")


def size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class Flags:
    def __init__(self, parser: argparse.ArgumentParser, command: str) -> None:
        self.parser = parser
        self.command = command

    def add(
        self,
        flag: str,
        help: str,
        type: Callable[[str], Any] = str,
        default: Any = None,
        required: bool = False,
        **kwargs: Any,
    ) -> None:
        env = env_name(self.command, flag)
        from_env = os.environ.get(env)
        if from_env is not None:
            default, required = from_env, False  # argparse applies ``type`` to string defaults
        shown = "" if default is None else f" (default: {default})"
        self.parser.add_argument(
            flag, type=type, default=default, required=required, help=f"{help}{shown} [env {env}]", **kwargs
        )
