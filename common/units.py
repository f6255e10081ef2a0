"""Sizes with units: ``512MiB``, ``4GiB``, ``10MB``, ``1024`` (bytes); budgets as a size or a share (``25%``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNITS = {
    "": 1,
    "B": 1,
    "K": 1000,
    "KB": 1000,
    "M": 1000**2,
    "MB": 1000**2,
    "G": 1000**3,
    "GB": 1000**3,
    "T": 1000**4,
    "TB": 1000**4,
    "KI": 1024,
    "KIB": 1024,
    "MI": 1024**2,
    "MIB": 1024**2,
    "GI": 1024**3,
    "GIB": 1024**3,
    "TI": 1024**4,
    "TIB": 1024**4,
}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*")


def parse_size(text: str | int) -> int:
    """Bytes from a size such as ``512MiB``; ValueError with the accepted forms otherwise."""
    if isinstance(text, int):
        if text < 0:
            raise ValueError("a size cannot be negative")
        return text
    match = _SIZE.fullmatch(text)
    unit = match.group(2).upper() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"invalid size {text!r}: use a number with an optional unit (B, KB, MB, GB, KiB, MiB, GiB)")
    return int(float(match.group(1)) * _UNITS[unit])


def format_size(n: int) -> str:
    """Human-readable binary size: 1536 -> '1.5KiB'."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}TiB"


@dataclass(frozen=True, slots=True)
class Amount:
    """A memory budget as given on the command line: bytes (``4GiB``) or a share
    of what the machine has (``50%``), resolved once the total is known."""

    bytes: int = 0
    share: float | None = None  # 0..1

    def __post_init__(self) -> None:
        if self.bytes < 0 or (self.share is not None and not 0 <= self.share <= 1):
            raise ValueError("a budget is a non-negative size or a share between 0% and 100%")

    def resolve(self, total: int) -> int:
        """Bytes: the size itself, or the share of ``total``."""
        return self.bytes if self.share is None else int(total * self.share)

    def __str__(self) -> str:
        return str(self.bytes) if self.share is None else f"{self.share * 100:g}%"


def parse_amount(text: str | Amount) -> Amount:
    """``512MiB`` or ``25%``; ValueError otherwise."""
    if isinstance(text, Amount):
        return text
    stripped = text.strip()
    if stripped.endswith("%"):
        try:
            percent = float(stripped[:-1])
        except ValueError:
            raise ValueError(f"invalid share {text!r}: use a percentage such as 25%") from None
        return Amount(share=percent / 100)
    return Amount(bytes=parse_size(stripped))
