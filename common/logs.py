"""Logging set-up shared by every process: one line per notable event."""

from __future__ import annotations

import logging
import sys


def setup_logging(role: str, level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format=f"%(asctime)s {role} %(levelname)s %(name)s: %(message)s",
    )
