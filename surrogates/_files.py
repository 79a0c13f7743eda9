"""Files of a saved surrogate: what was written, checked before anything is read back.

A saved surrogate is a folder holding `surrogate.json` and the model's own files, in formats
that cannot execute code when read (XGBoost's UBJSON, NumPy `.npz` read with
`allow_pickle=False`, scikit-learn models through skops with an explicit list of trusted
types). `surrogate.json` lists every other file of the folder (recursively) with its size
and SHA-256, and carries a SHA-256 of its own content. `verify_folder` refuses, before any
model file is parsed:

- a listed file that is missing, not a regular file (a symbolic link, a folder), or whose
  size or checksum differs (tampered or damaged);
- a file in the folder that the listing does not name (foreign: for example a pickle
  dropped beside the model);
- a listing entry that points outside the folder (`..`, an absolute path).

The checksums detect damage and edits; they are not a signature: whoever can write the
folder can also rewrite `surrogate.json`. What keeps a crafted folder from running code is
the formats, not the checksums.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

META = "surrogate.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _walk(root: Path) -> list[Path]:
    """Every entry under `root` that is not a folder (links included, not followed)."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        for name in dirnames:
            if (here / name).is_symlink():
                found.append(here / name)
        found.extend(here / name for name in filenames)
    return sorted(found)


def file_records(root: Path) -> dict[str, dict[str, Any]]:
    """`{relative posix path: {"bytes", "sha256"}}` of every file under `root` except the
    top-level `surrogate.json`."""
    records: dict[str, dict[str, Any]] = {}
    for path in _walk(root):
        rel = path.relative_to(root).as_posix()
        if rel == META:
            continue
        if path.is_symlink() or not path.is_file():
            raise ValueError(f"{path}: not a regular file; a saved surrogate holds only files.")
        records[rel] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    return records


def meta_checksum(meta: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of `meta` without its `checksum` entry."""
    body = {k: v for k, v in meta.items() if k != "checksum"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def fsync_tree(root: Path) -> None:
    """Flush every file and folder under `root` to the disk."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(Path(dirpath) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def verify_folder(root: Path, meta: Mapping[str, Any], meta_file: Path) -> None:
    """Check `meta`'s own checksum and every file it lists; see the module docstring.

    **Raises:** `ValueError` naming the file and what is wrong.
    """
    if meta.get("checksum") != meta_checksum(meta):
        raise ValueError(
            f"{meta_file}: its checksum does not match its content; the file was edited or "
            "damaged after it was saved. Refusing to load it."
        )
    listed = meta.get("files")
    if not isinstance(listed, Mapping):
        raise ValueError(f"{meta_file}: 'files' must map file names to checksums.")
    for rel, record in listed.items():
        parts = PurePosixPath(rel).parts if isinstance(rel, str) else ()
        if not parts or rel.startswith("/") or ".." in parts or "\\" in rel:
            raise ValueError(f"{meta_file}: file entry {rel!r} points outside the folder.")
        if not (
            isinstance(record, Mapping)
            and isinstance(record.get("sha256"), str)
            and isinstance(record.get("bytes"), int)
        ):
            raise ValueError(f"{meta_file}: file entry {rel!r} must have 'bytes' and 'sha256'.")
        path = root / rel
        if path.is_symlink() or not path.is_file():
            raise ValueError(
                f"{path}: listed in {meta_file.name} but missing (or not a regular file); the "
                "saved surrogate is incomplete."
            )
        size = path.stat().st_size
        if size != record["bytes"] or sha256_file(path) != record["sha256"]:
            raise ValueError(
                f"{path}: its size or SHA-256 differs from what {meta_file.name} recorded "
                f"({size} bytes, recorded {record['bytes']}); the file was changed or damaged "
                "after it was saved. Refusing to load it."
            )
    for path in _walk(root):
        rel = path.relative_to(root).as_posix()
        if rel != META and rel not in listed:
            raise ValueError(
                f"{path}: a file that {meta_file.name} does not list (foreign to the saved "
                "surrogate). Refusing to load the folder; remove the file or save the "
                "surrogate again."
            )
