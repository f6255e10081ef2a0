"""One allow-list rule for model names and versions, used by every part.

A model name is an identifier, never a path fragment: letters, digits, ``_``,
``-`` and ``.`` (not leading), at most 128 characters. Versions are positive
integers written in decimal, as in Triton's repository layout.
"""

from __future__ import annotations

import re

from protocol.errors import BadRequest

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")
_VERSION = re.compile(r"[1-9][0-9]{0,9}")


def is_valid_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None and ".." not in name


def is_valid_version(version: str) -> bool:
    return _VERSION.fullmatch(version) is not None


def check_name(name: str) -> str:
    if not is_valid_name(name):
        raise BadRequest("invalid model name: use letters, digits, '_', '-' and '.', at most 128")
    return name


def check_version(version: str) -> str:
    if not is_valid_version(version):
        raise BadRequest("invalid model version: a positive integer")
    return version
