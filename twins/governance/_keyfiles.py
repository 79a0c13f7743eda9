"""Secret files: written owner-only, refused when others can read them.

Both secrets of the governance room live in files of this kind: the pseudonym master key
(`twins.governance.write_pseudonym_key`) and the audit log's Ed25519 signing key
(`twins.governance.write_signing_key`). They follow OpenSSH's rule for private keys: a
secret file must be a regular file owned by the user who reads it (or root), with no
permission bit for group or others (mode `0600` or stricter), or it is refused before a
byte of it is read.

The checks are made on the open file descriptor (`os.fstat`), not on the name, so the file
that is checked is the file that is read. They apply on POSIX systems; elsewhere the file
system's access control lists are the operator's to set.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

# Flags that exist on POSIX only (the checks below are POSIX's; see the module docstring).
_POSIX = os.name == "posix"
CLOEXEC = os.O_CLOEXEC if _POSIX else 0
NOFOLLOW = os.O_NOFOLLOW if _POSIX else 0

# A secret file is small: a hex key or a PEM block. Anything much larger is not one.
MAX_SECRET_FILE_BYTES = 64 * 1024


class SecretFileError(PermissionError):
    """A secret file that is missing, unsafe (readable by others) or malformed."""


def read_secret_file(path: str | os.PathLike, *, what: str) -> bytes:
    """The bytes of a secret file, after checking that only its owner can read it.

    **Arguments:**

    - `path`: the file.
    - `what`: what the file holds, for error messages (`"pseudonym key file"`).

    **Returns:** the file's bytes.

    **Raises:** `SecretFileError` when the file is missing, not a regular file, owned by
    another user, or has any permission bit for group or others; the message says what was
    found and the `chmod` that fixes it.
    """
    path = Path(path)
    flags = os.O_RDONLY | CLOEXEC | NOFOLLOW
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise SecretFileError(f"The {what} {path} does not exist.") from None
    except OSError as error:
        # O_NOFOLLOW on a symbolic link fails with ELOOP: a secret is read from its own file.
        raise SecretFileError(
            f"Cannot open the {what} {path}: {error.strerror}. A secret file must be a "
            "regular file (not a symbolic link) that its owner can read."
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SecretFileError(f"The {what} {path} is not a regular file.")
        if _POSIX:
            check_owner_only(info, path, what=what)
        if info.st_size > MAX_SECRET_FILE_BYTES:
            raise SecretFileError(
                f"The {what} {path} has {info.st_size} bytes; expected a small key file "
                f"(at most {MAX_SECRET_FILE_BYTES})."
            )
        chunks = []
        while True:
            chunk = os.read(fd, MAX_SECRET_FILE_BYTES + 1)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def check_owner_only(info: os.stat_result, path: Path, *, what: str) -> None:
    """Refuse a secret file that group or others may use, or that another user owns.

    **Arguments:**

    - `info`: the file's `os.fstat` result.
    - `path`, `what`: for the message.

    **Raises:** `SecretFileError`.
    """
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise SecretFileError(
            f"The {what} {path} has mode {mode:04o}: it can be read or changed by its group "
            f"or by other users. Expected mode 0600 (owner only); fix with `chmod 600 {path}` "
            "and consider the key exposed if others could read it (rotate it)."
        )
    uid = os.getuid()
    if info.st_uid not in (uid, 0):
        raise SecretFileError(
            f"The {what} {path} is owned by user id {info.st_uid}, not by the user reading it "
            f"({uid}) or root: refused, as another user could replace it."
        )


def write_secret_file(path: str | os.PathLike, data: bytes, *, what: str) -> Path:
    """Create a new secret file, mode `0600`, with `data`; never overwrite one.

    The file is created with `O_CREAT | O_EXCL` (an existing file, or a link planted at the
    name, is refused), written, flushed to disk with `os.fsync`, and its folder synced so
    that the new name survives a crash.

    **Arguments:**

    - `path`: the file to create; its folder must exist.
    - `data`: the bytes.
    - `what`: for error messages.

    **Returns:** the path.

    **Raises:** `FileExistsError` when something exists at `path` (a key is never replaced
    silently: replacing a pseudonym key breaks every link to earlier exports).
    """
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | CLOEXEC | NOFOLLOW
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise FileExistsError(
            f"Refusing to overwrite the existing {what} {path}: move it away first if you "
            "really mean to replace it (see docs/governance.md on rotation)."
        ) from None
    try:
        if _POSIX:
            os.fchmod(fd, 0o600)  # whatever the umask
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_directory(path.parent)
    return path


def write_public_file(path: str | os.PathLike, data: bytes, *, what: str) -> Path:
    """Create a new non-secret file (mode `0644`), refusing to overwrite one.

    **Arguments:** as `write_secret_file`.

    **Returns:** the path.
    """
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | CLOEXEC | NOFOLLOW
    try:
        fd = os.open(path, flags, 0o644)
    except FileExistsError:
        raise FileExistsError(f"Refusing to overwrite the existing {what} {path}.") from None
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_directory(path.parent)
    return path


def fsync_directory(folder: Path) -> None:
    """Flush a folder's entries to disk (a new or renamed file survives a crash). A no-op
    where folders cannot be opened (Windows).

    **Arguments:**

    - `folder`: the folder.
    """
    if not _POSIX:
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
