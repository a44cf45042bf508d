"""Extracting an untrusted tar / tar.gz / tar.bz2 / tar.xz archive without trusting it.

`extract_tar` writes regular files and directories only, refuses what could escape or blow
up (absolute paths, '..', links, devices, duplicates, names that are not UTF-8 or too long,
oversized metadata entries, too many members, content or decompressed stream past the
caller's bounds) and turns every failure of the archive itself into `UnsafeArchive` (or
`ArchiveTooLarge`), so that only the disk's own errors propagate as OSError.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import shutil
import tarfile
import zlib
from collections import deque
from pathlib import Path
from typing import BinaryIO

from alkn_core.quoting import quoted

from .paths import safe_relpath

MAX_ARCHIVE_MEMBERS = 100_000
# Tar metadata (PAX headers, GNU long names) is read into memory whole: bound it (a long
# path needs a few KiB; a chain of PAX headers is held at once until it ends).
MAX_TAR_HEADER_BYTES = 64 * 1024
# Longest member path (and 255 bytes a component): what every filesystem takes.
MAX_MEMBER_PATH = 1024
# Headers and padding an archive may add to its content (per member, and at the end).
_TAR_OVERHEAD = 3 * tarfile.BLOCKSIZE
CHUNK = 1 << 20


class UnsafeArchive(ValueError):
    """The archive is not one we extract; the message says why (client input quoted)."""


class ArchiveTooLarge(UnsafeArchive):
    """The archive holds, or expands to, more than the caller allows."""


def _member_path(name: str) -> str:
    """The member's path relative to the archive root; "" for the root itself."""
    try:  # tarfile decodes a name that is not UTF-8 with surrogate escapes
        name.encode()
    except UnicodeEncodeError:
        raise UnsafeArchive(f"path in archive is not UTF-8: {quoted(name)}") from None
    rel = name
    while rel.startswith("./"):  # `tar -C dir .` writes ./config.json
        rel = rel[2:]
    rel = rel.rstrip("/")
    if rel in ("", "."):
        return ""
    try:
        rel = safe_relpath(rel)
    except ValueError:
        raise UnsafeArchive(f"unsafe path in archive: {quoted(name)}") from None
    # What the filesystem would refuse with ENAMETOOLONG (an error of ours, not a 4xx).
    if len(rel.encode()) > MAX_MEMBER_PATH or any(len(p.encode()) > 255 for p in rel.split("/")):
        raise UnsafeArchive(f"path in archive too long: {quoted(name)}")
    return rel


class _BoundedTarInfo(tarfile.TarInfo):
    """tarfile reads metadata members (PAX headers, GNU long names) into memory whole: a
    small compressed archive could declare one of gigabytes."""

    _METADATA = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE,
                 tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)

    # tarfile documents _proc_member as the hook for subclasses.
    def _proc_member(self, tf: tarfile.TarFile) -> tarfile.TarInfo:  # type: ignore[override]
        if self.type in self._METADATA and self.size > MAX_TAR_HEADER_BYTES:
            raise ArchiveTooLarge(
                f"archive metadata entry larger than {MAX_TAR_HEADER_BYTES} bytes")
        return super()._proc_member(tf)  # type: ignore[misc]


class _CappedReader(io.RawIOBase):
    """The decompressed archive, refused (TooLarge) past `limit` bytes: its compressed size
    says nothing about what it expands to. Decompression errors become tarfile.ReadError
    here, so that a disk error while writing is never mistaken for a bad archive."""

    # The last bytes read are kept (`tail`): tarfile reads ahead of the header that ended
    # the archive, and `check_end` must see them.
    TAIL = 2 * CHUNK

    def __init__(self, inner: BinaryIO, limit: int | None) -> None:
        super().__init__()
        self.inner, self.limit, self.count = inner, limit, 0
        self.tail: deque[bytes] = deque()
        self.tail_bytes = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = CHUNK
        try:
            data = self.inner.read(size)
        except (OSError, EOFError, zlib.error, lzma.LZMAError) as e:
            raise tarfile.ReadError(f"{type(e).__name__}") from None
        self.count += len(data)
        if self.limit is not None and self.count > self.limit:
            raise ArchiveTooLarge(f"archive expands to more than {self.limit} bytes")
        self.tail.append(data)
        self.tail_bytes += len(data)
        while self.tail_bytes - len(self.tail[0]) >= self.TAIL:
            self.tail_bytes -= len(self.tail.popleft())
        return data

    def check_end(self, end: int) -> None:
        """The tar stream ended at offset `end` (the header tarfile stopped at): from there
        to the end of the stream, read to its end here (so that gzip's and xz's checksums
        are verified), there must be zeros only, at least one block of them (tar's
        end-of-archive marker). tarfile itself ends quietly at a truncated or unreadable
        header after the first member, which would drop the members after it."""
        start = self.count - self.tail_bytes
        if end < start:  # tarfile read further ahead than TAIL: not an archive it wrote
            raise UnsafeArchive("archive ends in an unreadable way")
        rest = b"".join(self.tail)[end - start:]
        zeros, clean = len(rest), rest.count(0) == len(rest)
        while data := self.read(CHUNK):
            zeros += len(data)
            clean = clean and data.count(0) == len(data)
        if not clean:
            raise UnsafeArchive("archive is damaged: data after its last readable entry")
        if zeros < tarfile.BLOCKSIZE:
            raise UnsafeArchive("archive is truncated: it ends without tar's end-of-archive "
                                "marker")


class _XzStreams(io.RawIOBase):
    """xz streams one after another, with stream padding (zero bytes, a multiple of four)
    between and after them, as `xz -d` reads them: lzma.LZMAFile takes any bytes after a
    stream for a stream cut short (EOFError), padding included.

    The decompressor is fed FEED bytes at a time (views of a CHUNK read, no copies): what
    it has not used at a stream's end is copied once, so thousands of tiny streams in one
    read cost as much as one."""

    FEED = 1 << 16

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__()
        self.raw, self.done = raw, False
        self.front = b""  # what the last stream left unused, read first
        self.pending = memoryview(b"")  # the rest of the last raw read
        self.dec = lzma.LZMADecompressor(lzma.FORMAT_XZ)

    def readable(self) -> bool:
        return True

    def _input(self) -> bytes | memoryview:
        if self.front:
            data, self.front = self.front, b""
            return data
        if not self.pending:
            self.pending = memoryview(self.raw.read(CHUNK))
        data, self.pending = self.pending[: self.FEED], self.pending[self.FEED :]
        return data

    def read(self, size: int | None = -1) -> bytes:
        if size == 0:
            return b""
        size = CHUNK if size is None or size < 0 else size
        while not self.done:
            if self.dec.eof:  # between streams: padding, another stream, or the end
                self._next_stream()
                continue
            data = self._input() if self.dec.needs_input else b""
            if self.dec.needs_input and not data:
                raise EOFError("the xz stream is cut short")
            out = self.dec.decompress(data, max_length=size)
            if out:
                return out
        return b""

    def _next_stream(self) -> None:
        zeros, data = 0, self.dec.unused_data
        while True:
            data = data or bytes(self._input())
            if not data:  # the end of the file
                self.done = True
                break
            stripped = data.lstrip(b"\0")
            zeros += len(data) - len(stripped)
            if stripped:
                self.front = stripped
                self.dec = lzma.LZMADecompressor(lzma.FORMAT_XZ)
                break
            data = b""
        if zeros % 4:
            raise lzma.LZMAError("xz stream padding is not a multiple of four bytes")


def _decompressed(raw: BinaryIO) -> BinaryIO:
    """`raw` decompressed by its magic bytes (gzip, bzip2, xz), or as is (plain tar)."""
    magic = raw.read(6)
    raw.seek(0)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(raw)  # type: ignore[return-value]
    if magic.startswith(b"\xfd7zXZ\x00"):
        return _XzStreams(raw)  # type: ignore[return-value]
    return raw


def extract_tar(archive: Path, dest: Path, max_bytes: int | None = None,
                max_files: int | None = None) -> None:
    """Extract regular files and directories only; absolute paths, '..', links, devices and
    duplicates are refused (Invalid); more than `max_bytes` of content, or an archive that
    decompresses to much more than that, is TooLarge (a decompression bomb), and so is a
    file past the first `max_files` (before it is written)."""
    total = 0
    seen: set[str] = set()
    # Content plus the headers and padding of the most members an archive may have.
    stream_limit = None if max_bytes is None else \
        max_bytes + (MAX_ARCHIVE_MEMBERS + 2) * _TAR_OVERHEAD
    try:
        with archive.open("rb") as raw, _decompressed(raw) as plain, \
                tarfile.open(fileobj=(reader := _CappedReader(plain, stream_limit)),
                             mode="r|", tarinfo=_BoundedTarInfo) as tf:
            # Stream mode ("r|"): one sequential pass, nothing seeks back.
            for count, member in enumerate(tf, 1):
                if count > MAX_ARCHIVE_MEMBERS:
                    raise UnsafeArchive(f"archive has more than {MAX_ARCHIVE_MEMBERS} entries")
                rel = _member_path(member.name)
                target = dest / rel
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if not member.isreg() or member.issparse() or rel == "":
                    raise UnsafeArchive(f"archive entry {quoted(rel)} is not a regular file or "
                                        "directory (links and devices are refused)")
                if rel in seen:
                    raise UnsafeArchive(f"archive holds {quoted(rel)} twice")
                seen.add(rel)
                if max_files is not None and len(seen) > max_files:
                    raise ArchiveTooLarge(f"a version may hold at most {max_files} files")
                total += member.size
                if max_bytes is not None and total > max_bytes:  # before writing any of it
                    raise ArchiveTooLarge(f"archive content exceeds {max_bytes} bytes")
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tf.extractfile(member)
                assert src is not None  # a regular member always has content
                with target.open("wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
            reader.check_end(tf.offset)
    except (FileExistsError, NotADirectoryError, IsADirectoryError):
        raise UnsafeArchive("archive entries conflict (a file and a directory of the same path)"
                      ) from None
    except RecursionError:  # a chain of thousands of PAX headers
        raise UnsafeArchive("archive metadata is nested too deeply") from None
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError) as e:
        raise UnsafeArchive(f"not a readable tar or tar.gz archive ({type(e).__name__})") from None
