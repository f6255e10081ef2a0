"""Files a model version may not carry: pickles and archives, refused unopened.

Pickle is code: unpickling a file runs whatever it names. ``torch.load`` files
(``.pt``, ``.pth``, ``.bin``, ``.ckpt``), plain pickles, joblib dumps, numpy
files (object arrays are pickles) and torch.export archives (``.pt2``: in torch
2.13 ``torch.export.load`` retries a failed restricted load with the
unrestricted unpickler) are all refused, and so is a version directory that
carries one: it is UNAVAILABLE with the reason, so nobody mistakes it for a
safetensors or ONNX model that happens to fail. Files are judged by name first
(such a file is never read); any other file but the version's own config,
manifest and weights file (each read by its own strict parser) has its first
bytes compared with the pickle, zip, numpy, gzip and tar signatures, and those
bytes are all that is ever read of it. Nothing here imports torch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

# Suffixes of files that are, or may hold, pickles or other code (Keras files can
# carry marshalled Python in Lambda layers): never opened.
REFUSED_SUFFIXES = (
    ".pt", ".pth", ".pt2", ".bin", ".ckpt", ".pkl", ".pickle", ".joblib", ".jbl", ".dill", ".sav",
    ".npy", ".npz", ".mar", ".h5", ".hdf5", ".keras", ".zip", ".tar", ".tgz", ".gz", ".xz", ".bz2",
)  # fmt: skip
SIGNATURES = {
    b"PK\x03\x04": "a zip archive (torch.save and .pt2 archives are zips of pickles)",
    b"\x93NUMPY": "a numpy array file (object arrays are pickles)",
    b"\x1f\x8b": "a gzip archive",
}
MAX_ENTRIES = 1000  # a version directory holds a handful of files; a bound keeps a scan cheap


class RefusedFile(ValueError):
    """A version carries a pickle or an archive (the message names the file, not its path)."""


def refuse_pickles(directory: Path, parsed: Iterable[str]) -> None:
    """RefusedFile when ``directory`` (recursively) holds a file that is, or may hold, a
    pickle. ``parsed``: the names at its top level that their own strict parsers read
    (config, manifest, the format's weights file), so they are not sniffed."""
    skip = set(parsed)
    seen = 0
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files):
            seen += 1
            if seen > MAX_ENTRIES:
                raise RefusedFile(f"the version directory holds more than {MAX_ENTRIES} files")
            if root == str(directory) and name in skip:
                continue
            check_file_name(name)
            kind = sniff(Path(root) / name)
            if kind is not None:
                raise RefusedFile(f"'{_shown(name)}' is {kind}: {_ADVICE}")


def check_file_name(name: str) -> None:
    """RefusedFile when ``name`` says pickle or archive (nothing is read)."""
    lowered = name.lower()
    for suffix in REFUSED_SUFFIXES:
        if lowered.endswith(suffix):
            raise RefusedFile(f"'{_shown(name)}' is a {suffix} file, which may hold a pickle: {_ADVICE}")


def sniff(path: Path) -> str | None:
    """What the first bytes say the file is, when it is a pickle or an archive; None otherwise."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return None  # unreadable: whoever reads it next fails on its own
    if len(head) >= 2 and head[0] == 0x80 and 1 <= head[1] <= 5:
        return "a pickle"
    for magic, kind in SIGNATURES.items():
        if head.startswith(magic):
            return kind
    if head[257:262] == b"ustar":
        return "a tar archive (torch's legacy format is a tar of pickles)"
    return None


_ADVICE = "pickles are never opened here; serve safetensors or ONNX (affinity models add converts a .pt2)"


def _shown(name: str) -> str:
    return name if len(name) <= 64 else name[:61] + "..."
