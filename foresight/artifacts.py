"""The artifact store: ONNX model files on a file system (a local directory or a shared volume).

A file is named by the SHA-256 of its bytes (`ab/ab12…ef.onnx` under FORESIGHT_ARTIFACT_DIR),
so writing the same model twice stores it once and a name never points at other bytes. Writes
are atomic: a temporary file in the same directory, fsynced, renamed into place, and the
directory fsynced, so a crash leaves either the whole file or none. Every load hashes the bytes
again and refuses a file that no longer matches the registry's sha256 (ArtifactCorrupt): a
truncated copy, a bit flip on a volume or a hand-replaced file never reaches a scorer.

Paths stored in the registry are relative to FORESIGHT_ARTIFACT_DIR, so the store can move to
another mount without rewriting rows.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

SUFFIX = ".onnx"


class ArtifactError(Exception):
    """An artifact cannot be used."""


class ArtifactMissing(ArtifactError):
    """No file at the recorded path."""


class ArtifactCorrupt(ArtifactError):
    """The file's bytes do not hash to the recorded sha256."""


@dataclass(frozen=True)
class StoredArtifact:
    path: str  # relative to the store's root
    sha256: str
    size: int


def root() -> Path:
    return Path(settings.FORESIGHT_ARTIFACT_DIR)


def resolve(path: str) -> Path:
    """The file behind a registry path (relative to the store; absolute paths as they are)."""
    candidate = Path(path)
    return candidate if candidate.is_absolute() else root() / candidate


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(data: bytes) -> StoredArtifact:
    """Store `data` under its hash; returns where (relative) and the hash. Idempotent."""
    if not data:
        raise ArtifactError("an artifact cannot be empty")
    sha256 = digest(data)
    relative = f"{sha256[:2]}/{sha256}{SUFFIX}"
    target = root() / relative
    if target.exists() and _hash_file(target) == sha256:
        return StoredArtifact(relative, sha256, len(data))
    new_directory = not target.parent.exists()
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=SUFFIX)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        # Replaces a damaged file of the same name too: the new bytes are the right ones.
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_directory(target.parent)
    if new_directory:
        _fsync_directory(target.parent.parent)
    return StoredArtifact(relative, sha256, len(data))


def load(path: str, sha256: str) -> bytes:
    """The artifact's bytes, after checking they still hash to `sha256`."""
    file = resolve(path)
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise ArtifactMissing(f"artifact {path}: no such file under {root()}") from None
    actual = digest(data)
    if actual != sha256.lower():
        raise ArtifactCorrupt(
            f"artifact {path}: its bytes hash to {actual[:12]}…, the registry recorded "
            f"{sha256[:12]}… (damaged or replaced file)"
        )
    return data


def _hash_file(file: Path) -> str:
    hasher = hashlib.sha256()
    with file.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
