"""Downloads: a version's files one by one through the file route, each into `<file>.part`
(resumed with `Range` when a part is there), checked against the listing's sha256, then
renamed into place; and the archive route into one file."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

import httpx

from ._core import CHUNK, Plan, Sleep, Stream, archive_call, file_call, get_version
from .errors import ChecksumMismatch, DownloadError
from .models import FileEntry, Version

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
RETRY_DELAY_S = 1.0


@dataclass(frozen=True)
class DownloadProgress:
    """Passed to the `progress` callback after every chunk (and once per file at its start,
    with the bytes already on disk)."""

    path: str
    done: int
    size: int
    total_done: int
    total_size: int


@dataclass(frozen=True)
class DownloadedFile:
    path: str
    local_path: Path
    size: int
    sha256: str
    resumed_from: int  # bytes that were already in `<file>.part` and kept
    skipped: bool  # already complete in the destination with the right sha256


@dataclass(frozen=True)
class Download:
    model: str
    version: int
    dest: Path
    files: list[DownloadedFile]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


ProgressCallback = Callable[[DownloadProgress], None]


@dataclass
class _Totals:
    total_size: int
    callback: ProgressCallback | None
    total_done: int = 0

    def report(self, path: str, done: int, size: int) -> None:
        if self.callback is not None:
            self.callback(DownloadProgress(path, done, size, self.total_done, self.total_size))


def _sha256_file(path: Path) -> hashlib._Hash:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest


def local_path(dest: Path, path: str) -> Path:
    """Where a listed file goes; a listing that points outside `dest` is refused."""
    rel = PurePosixPath(path)
    if rel.is_absolute() or not rel.parts or ".." in rel.parts:
        raise DownloadError(f"refusing to write the listed path {path!r} outside {dest}")
    return dest.joinpath(*rel.parts)


@dataclass
class FileSink:
    """One listed file: what is on disk already, the Range to ask for, the checks."""

    entry: FileEntry
    final: Path
    totals: _Totals
    offset: int = 0
    resumed_from: int = 0
    skipped: bool = False
    _file: IO[bytes] | None = None
    _digest: hashlib._Hash | None = None
    _counted: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        self.part = self.final.with_name(self.final.name + ".part")
        size = self.entry.size
        if self.final.is_file() and self.final.stat().st_size == size \
                and _sha256_file(self.final).hexdigest() == self.entry.sha256:
            self.skipped, self.offset = True, size
        elif self.part.is_file():
            self.offset = self.part.stat().st_size
            if self.offset > size:  # not a prefix of this file: start over
                self.part.unlink()
                self.offset = 0
        self.resumed_from = 0 if self.skipped else self.offset
        self._count(self.offset)

    def _count(self, offset: int) -> None:
        self.totals.total_done += offset - self._counted
        self._counted = offset
        self.totals.report(self.entry.path, offset, self.entry.size)

    @property
    def needs_bytes(self) -> bool:
        return self.offset < self.entry.size

    def request_headers(self) -> dict[str, str]:
        if self.offset == 0:
            return {}
        # If-Range: should the file behind the URL have changed, the server sends it whole.
        return {"Range": f"bytes={self.offset}-", "If-Range": f'"{self.entry.sha256}"'}

    def start(self, status: int, headers: httpx.Headers) -> None:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        if status == 206:
            match = _CONTENT_RANGE.match(headers.get("content-range", ""))
            if match is None or int(match.group(1)) != self.offset or \
                    match.group(3) not in ("*", str(self.entry.size)):
                raise DownloadError(
                    f"{self.entry.path}: asked for bytes {self.offset}- of "
                    f"{self.entry.size}, got Content-Range {headers.get('content-range')!r}")
            # Hash what is kept, then keep hashing what arrives.
            self._digest = _sha256_file(self.part) if self.offset else hashlib.sha256()
            self._file = self.part.open("ab")
        elif status == 200:  # the whole file (Range ignored or none sent): start over
            self.offset = self.resumed_from = 0
            self._count(0)
            self._digest = hashlib.sha256()
            self._file = self.part.open("wb")
        else:
            raise DownloadError(f"{self.entry.path}: unexpected status {status}")

    def write(self, chunk: bytes) -> None:
        assert self._file is not None and self._digest is not None
        if self.offset + len(chunk) > self.entry.size:
            raise DownloadError(f"{self.entry.path}: the server sent more than the "
                                f"{self.entry.size} bytes listed")
        self._file.write(chunk)
        self._digest.update(chunk)
        self.offset += len(chunk)
        self._count(self.offset)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()  # what was written stays in .part for the next attempt
            self._file = None

    def finish(self) -> DownloadedFile:
        if not self.skipped:
            if self._digest is None:  # a complete .part from an earlier run: hash it all
                self._digest = _sha256_file(self.part)
            actual = self._digest.hexdigest()
            if actual != self.entry.sha256:
                self.part.unlink(missing_ok=True)
                raise ChecksumMismatch(self.entry.path, self.entry.sha256, actual)
            os.replace(self.part, self.final)
        return DownloadedFile(self.entry.path, self.final, self.entry.size, self.entry.sha256,
                              self.resumed_from, self.skipped)


def download_plan(name: str, ref: str | int, dest: Path, progress: ProgressCallback | None,
                  retries: int) -> Plan[Download]:
    version: Version = yield get_version(name, ref)
    if version.status != "ready":  # a revoked version's listing outlives its files
        raise DownloadError(f"{name} version {version.version} is {version.status}; only "
                            "ready versions can be downloaded")
    # Pinned to the number: `latest` or an alias may move while the files download.
    number = version.version
    dest.mkdir(parents=True, exist_ok=True)
    totals = _Totals(sum(f.size for f in version.files), progress)
    done: list[DownloadedFile] = []
    for entry in version.files:
        sink = FileSink(entry, local_path(dest, entry.path), totals)
        failures = 0
        while sink.needs_bytes:
            try:
                yield Stream(file_call(name, number, entry.path, sink.request_headers()), sink)
            except httpx.TransportError:
                # A dropped connection: the bytes so far are in .part, ask for the rest.
                failures += 1
                if failures > retries:
                    raise
                yield Sleep(RETRY_DELAY_S * failures)
        done.append(sink.finish())
    return Download(name, number, dest, done)


@dataclass
class ArchiveSink:
    """The tar of a whole version into `<dest>.part`, renamed to `dest` when complete."""

    dest: Path
    size: int = 0
    _file: IO[bytes] | None = None

    def start(self, status: int, headers: httpx.Headers) -> None:
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.part.open("wb")

    @property
    def part(self) -> Path:
        return self.dest.with_name(self.dest.name + ".part")

    def write(self, chunk: bytes) -> None:
        assert self._file is not None
        self._file.write(chunk)
        self.size += len(chunk)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def archive_plan(name: str, ref: str | int, dest: Path) -> Plan[Path]:
    sink = ArchiveSink(dest)
    try:
        yield Stream(archive_call(name, ref), sink)
    except BaseException:
        sink.part.unlink(missing_ok=True)  # the archive route does not resume
        raise
    os.replace(sink.part, dest)
    return dest
