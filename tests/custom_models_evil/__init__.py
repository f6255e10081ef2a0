"""A package whose name starts like an allowed one (``custom_models``) but is not it:
allowing ``custom_models`` must never import this. Importing it leaves a marker file
(its path in ``EVIL_IMPORT_MARKER``), so a test can prove it never ran."""

import os
from pathlib import Path

_marker = os.environ.get("EVIL_IMPORT_MARKER")
if _marker:
    Path(_marker).touch()


def build(**args: object) -> None:
    return None
