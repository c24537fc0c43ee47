"""The sha256 of a file's bytes, read in 1 MiB chunks: signed file lists (trust.py), the check of an exec from a
signed folder (engine.py) and what a rollback commits (rollback.py) name files by it."""

from __future__ import annotations

import hashlib
import os


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
