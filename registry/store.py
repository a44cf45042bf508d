"""Artifact store: the bytes of versions. A local directory, or an S3-compatible bucket.

A version directory is published atomically: files are copied into a temporary place,
hashed, then moved under their final key in one rename (local) or written under a fresh
key that only the committed database row points to (S3). Nothing half-written is ever
reachable through a ready version.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from archive_safety.paths import safe_relpath

CHUNK = 1 << 20


@dataclass(frozen=True)
class FileInfo:
    path: str
    size: int
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


def hash_file(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def regular_files(root: Path) -> Iterator[Path]:
    """Every file under root, sorted; ValueError for anything but regular files and real
    directories: a symlink (to a file or a directory: os.walk would silently skip the
    latter, and it would then be published pointing out of the store), a FIFO, a device,
    a socket."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in dirnames:
            sub = Path(dirpath) / name
            if sub.is_symlink():
                raise ValueError(f"not a regular directory: {sub.relative_to(root)}")
        for name in sorted(filenames):
            full = Path(dirpath) / name
            if full.is_symlink() or not full.is_file():
                raise ValueError(f"not a regular file: {full.relative_to(root)}")
            yield full


def scan_dir(root: Path) -> list[FileInfo]:
    """Every regular file under root (anything else refused), sorted, with size and sha256."""
    out = []
    for full in regular_files(root):
        size, digest = hash_file(full)
        out.append(FileInfo(full.relative_to(root).as_posix(), size, digest))
    return out


class ArtifactStore(Protocol):
    def publish_dir(self, src: Path, key: str) -> list[FileInfo]: ...
    def open_range(self, key: str, path: str, start: int = 0,
                   end: int | None = None) -> Iterator[bytes]: ...
    def fetch_dir(self, key: str, dest: Path) -> Path: ...
    def delete(self, key: str) -> None: ...
    def list_keys(self, prefix: str) -> list[tuple[str, float]]: ...
    def exists(self, key: str, path: str) -> bool: ...
    def ping(self) -> None: ...


class FileRange:
    """Bytes start..end (inclusive) of a local file: an iterator of CHUNK-sized reads, and
    `read(n)` for callers that read more at once (the download route reads several chunks
    per thread hand-off)."""

    def __init__(self, path: Path, start: int = 0, end: int | None = None) -> None:
        self._file = path.open("rb", buffering=0)
        self._pos = start
        self._stop = os.fstat(self._file.fileno()).st_size if end is None else end + 1

    def __iter__(self) -> FileRange:
        return self

    def __next__(self) -> bytes:
        if not (chunk := self.read(CHUNK)):
            raise StopIteration
        return chunk

    def read(self, size: int) -> bytes:
        """Up to `size` next bytes, waiting for the disk if need be (b"" at the end)."""
        n = min(size, self._stop - self._pos)
        chunk = os.pread(self._file.fileno(), n, self._pos) if n > 0 and not self._file.closed \
            else b""
        self._pos += len(chunk)
        if not chunk:
            self.close()
        return chunk

    def close(self) -> None:
        self._file.close()


class LocalStore:
    """Versions as directories under one root; publish is a rename on the same filesystem."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        (self.root / ".tmp").mkdir(parents=True, exist_ok=True)

    def _dir(self, key: str) -> Path:
        return self.root / safe_relpath(key)

    def staging_dir(self) -> Path:
        """A fresh temporary directory on the store's filesystem (for writers that produce
        files directly, like save_pretrained)."""
        d = self.root / ".tmp" / uuid.uuid4().hex
        d.mkdir(parents=True)
        return d

    def publish_dir(self, src: Path, key: str) -> list[FileInfo]:
        final = self._dir(key)
        if src.resolve().is_relative_to(self.root / ".tmp"):
            staged = src.resolve()  # the caller's staging directory: the caller removes it
            files = scan_dir(staged)
        else:
            staged = self.staging_dir()
            try:
                shutil.rmtree(staged)
                shutil.copytree(src, staged, symlinks=True)
                files = scan_dir(staged)
            except BaseException:  # a refused or failed copy leaves nothing in staging
                shutil.rmtree(staged, ignore_errors=True)
                raise
        if final.exists():  # a crashed earlier attempt for the same key: never published
            shutil.rmtree(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, final)
        return files

    def local_dir(self, key: str) -> Path:
        return self._dir(key)

    def open_range(self, key: str, path: str, start: int = 0,
                   end: int | None = None) -> FileRange:
        """Bytes start..end (inclusive) of one file, streamed in chunks."""
        return FileRange(self._dir(key) / safe_relpath(path), start, end)

    def fetch_dir(self, key: str, dest: Path | None = None) -> Path:
        return self._dir(key)  # already local: load in place

    def exists(self, key: str, path: str) -> bool:
        return (self._dir(key) / safe_relpath(path)).is_file()

    def delete(self, key: str) -> None:
        shutil.rmtree(self._dir(key), ignore_errors=True)

    def list_keys(self, prefix: str) -> list[tuple[str, float]]:
        """(key, modification time) of every version directory directly under `prefix`;
        with prefix ".tmp", the staging directories."""
        base = self.root / safe_relpath(prefix)
        if not base.is_dir():
            return []
        return [(f"{prefix}/{d.name}", d.stat().st_mtime) for d in sorted(base.iterdir())
                if d.is_dir()]

    def ping(self) -> None:
        probe = self.root / ".tmp" / f".ping-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()


class S3Store:
    """An S3-compatible bucket (boto3; endpoint from AWS_ENDPOINT_URL when set)."""

    def __init__(self, url: str) -> None:
        import boto3

        rest = url.removeprefix("s3://")
        self.bucket, _, prefix = rest.partition("/")
        self.prefix = prefix.strip("/")
        self.s3 = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL"))

    def _key(self, key: str, path: str = "") -> str:
        parts = [p for p in (self.prefix, safe_relpath(key), path and safe_relpath(path)) if p]
        return "/".join(parts)

    def publish_dir(self, src: Path, key: str) -> list[FileInfo]:
        files = scan_dir(src)
        for f in files:
            self.s3.upload_file(str(src / f.path), self.bucket, self._key(key, f.path))
        return files

    def open_range(self, key: str, path: str, start: int = 0,
                   end: int | None = None) -> Iterator[bytes]:
        rng = f"bytes={start}-" + ("" if end is None else str(end))
        body = self.s3.get_object(Bucket=self.bucket, Key=self._key(key, path), Range=rng)["Body"]
        while chunk := body.read(CHUNK):
            yield chunk

    def fetch_dir(self, key: str, dest: Path | None = None) -> Path:
        if dest is None:
            raise ValueError("S3Store.fetch_dir needs a destination directory")
        paginator = self.s3.get_paginator("list_objects_v2")
        base = self._key(key) + "/"
        for page in paginator.paginate(Bucket=self.bucket, Prefix=base):
            for obj in page.get("Contents", []):
                target = dest / safe_relpath(obj["Key"][len(base):])
                target.parent.mkdir(parents=True, exist_ok=True)
                self.s3.download_file(self.bucket, obj["Key"], str(target))
        return dest

    def exists(self, key: str, path: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.bucket, Key=self._key(key, path))
            return True
        except Exception:
            return False

    def delete(self, key: str) -> None:
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(key) + "/"):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})

    def list_keys(self, prefix: str) -> list[tuple[str, float]]:
        """(key, newest object time) of every key directly under `prefix`."""
        base = self._key(prefix) + "/"
        newest: dict[str, float] = {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                      Prefix=base):
            for obj in page.get("Contents", []):
                name = obj["Key"][len(base):].split("/", 1)[0]
                when = obj["LastModified"].timestamp()
                newest[name] = max(newest.get(name, 0.0), when)
        return [(f"{prefix}/{n}", t) for n, t in sorted(newest.items())]

    def ping(self) -> None:
        self.s3.head_bucket(Bucket=self.bucket)


def open_store(root: str) -> LocalStore | S3Store:
    return S3Store(root) if root.startswith("s3://") else LocalStore(root)
