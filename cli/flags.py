"""Flags with an environment variable each, named for their command.

``--port`` of ``affinity balancer`` reads ``AFFINITY_BALANCER_PORT`` when not
given, so one variable never means two things. The environment is read when
the parser is built (at command start), never at import time.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable
from typing import Any, TypeVar

from common.units import Amount, parse_amount, parse_size

T = TypeVar("T")


def env_name(command: str, flag: str) -> str:
    return f"AFFINITY_{command}_{flag.lstrip('-')}".upper().replace("-", "_")


def size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def names(text: str) -> tuple[str, ...]:
    """A comma-separated list: ``acme,beta`` -> ('acme', 'beta')."""
    return tuple(n.strip() for n in text.split(",") if n.strip())


def amount(text: str) -> Amount:
    """A budget: a size (``4GiB``) or a share of what the machine has (``50%``)."""
    try:
        return parse_amount(text)
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
        env: str | None = None,
        secret: bool = False,
        **kwargs: Any,
    ) -> None:
        """``env``: the variable to read instead of the command's own (only the
        shared admin token has one); ``secret``: never show its value in ``--help``."""
        env = env or env_name(self.command, flag)
        from_env = os.environ.get(env)
        switch = kwargs.get("action") in ("store_true", argparse.BooleanOptionalAction)
        if from_env is not None:
            default, required = from_env, False  # argparse applies ``type`` to string defaults
            if switch:
                default = from_env.strip().lower() in ("1", "true", "yes", "on")
        shown = "" if default is None or secret or switch else f" (default: {default})"
        text = f"{help}{shown} [env {env}]".replace("%", "%%")  # argparse %-formats help ("50%" defaults)
        if switch:
            self.parser.add_argument(flag, default=bool(default), help=text, **kwargs)
        else:
            self.parser.add_argument(flag, type=type, default=default, required=required, help=text, **kwargs)


def config_from(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """Build a config dataclass from parsed flags, field by field: every field whose
    name matches a flag's destination is taken from ``args`` (so a new flag needs
    only its field and its ``Flags.add``), ``overrides`` win."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}  # type: ignore[arg-type]
    values.update(overrides)
    return cls(**values)
