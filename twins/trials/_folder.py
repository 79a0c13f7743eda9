"""A trial's results folder on disk: durable atomic writes, and the parts' integrity.

Every part (`patients/`, `bands/`, `trajectories/part-NNNNN.parquet`) is recorded in
`manifest.json` with its row count, size and SHA-256 when it is written; `damaged_parts`
and `unrecorded_parts` compare a folder with those records (on resume, and before a
report is built from it).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: The subfolders that hold a trial's Parquet parts.
PART_FOLDERS = ("patients", "bands", "trajectories")
PART_NAME = re.compile(r"part-(\d{5})\.parquet")


def durable_replace(tmp: Path, data: bytes, path: Path) -> None:
    """Write `data` to `tmp`, flush it to the disk, rename it to `path` (atomic on POSIX)
    and flush the folder, so that a crash leaves either the whole new file or the old one."""
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def damaged_parts(root: Path, parts: Mapping[str, Any]) -> dict[str, str]:
    """The recorded parts of a results folder that are missing, not regular files, or whose
    size or SHA-256 differs from the record: `{relative path: what is wrong}`."""
    damaged = {}
    for rel, record in sorted(parts.items()):
        path = root / rel
        if path.is_symlink() or not path.is_file():
            damaged[rel] = "recorded in manifest.json but missing"
        elif path.stat().st_size != record.get("bytes") or sha256_file(path) != record.get(
            "sha256"
        ):
            damaged[rel] = "damaged (its size or SHA-256 differs from manifest.json's record)"
    return damaged


def unrecorded_parts(root: Path, parts: Mapping[str, Any]) -> list[str]:
    """Part files in a results folder that the manifest does not record."""
    found = []
    for sub in PART_FOLDERS:
        folder = root / sub
        if folder.is_dir():
            found += [
                f"{sub}/{p.name}"
                for p in sorted(folder.iterdir())
                if PART_NAME.fullmatch(p.name) and f"{sub}/{p.name}" not in parts
            ]
    return found
