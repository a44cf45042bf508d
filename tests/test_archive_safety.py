"""archive_safety.tar.extract_tar on damaged archives: a checksum that does not match, a
stream cut short, data after the last entry; each refused (UnsafeArchive) where tarfile alone
would end quietly and drop what follows. Well-formed archives of every compression still
extract. Pure code: no servers."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from archive_safety.tar import UnsafeArchive, extract_tar

WEIGHTS = bytes(range(256)) * 8  # 2048 bytes, recognisable inside a level-0 gzip stream


def _tar(**files: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name.replace("__", "."))
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


PLAIN = _tar(config__json=b"{}", model__safetensors=WEIGHTS)


def _flip_weights_byte(data: bytes) -> bytes:
    at = data.index(WEIGHTS) + 100
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "tar": lambda b: b, "gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress,
    # what `xz -d` reads too: stream padding (zeros, a multiple of 4), streams in a row
    "xz-padded": lambda b: lzma.compress(b) + bytes(8),
    "xz-two-streams": lambda b: lzma.compress(b[:1024]) + bytes(4) + lzma.compress(b[1024:]),
    "gz-zero-padded": lambda b: gzip.compress(b) + bytes(100)}

DAMAGED: dict[str, Callable[[], bytes]] = {
    # the weights changed after the checksum was taken: gzip's CRC no longer matches
    "gzip-crc": lambda: _flip_weights_byte(gzip.compress(PLAIN, compresslevel=0)),
    "gzip-without-trailer": lambda: gzip.compress(PLAIN)[:-8],
    "xz-cut": lambda: lzma.compress(PLAIN)[:-10],
    "bz2-cut": lambda: bz2.compress(PLAIN)[:-10],
    "xz-padding-not-a-multiple-of-4": lambda: lzma.compress(PLAIN) + bytes(3),
    "gz-then-garbage": lambda: gzip.compress(PLAIN) + b"garbage",
    # the second member's header cut: tarfile ends quietly after config.json
    "tar-cut-in-a-header": lambda: PLAIN[:1024 + 100],
    "tar-cut-at-a-member-boundary": lambda: PLAIN[:1024],
    "tar-cut-after-the-last-member": lambda: PLAIN[:1024 + 512 + len(WEIGHTS)],
    "gz-of-a-cut-tar": lambda: gzip.compress(PLAIN[:1024 + 100]),
    # a header that is not one, after the first member
    "tar-garbage-header": lambda: PLAIN[:1024] + b"\x01" * 512 + PLAIN[1024:],
    "data-after-the-end": lambda: PLAIN + b"more",
    "two-archives-concatenated": lambda: PLAIN + _tar(extra__bin=b"x"),
}


@pytest.mark.parametrize("kind", sorted(COMPRESS))
def test_well_formed_archives_extract(tmp_path: Path, kind: str) -> None:
    archive = tmp_path / "a"
    archive.write_bytes(COMPRESS[kind](PLAIN))
    extract_tar(archive, tmp_path / "out")
    assert (tmp_path / "out" / "config.json").read_bytes() == b"{}"
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == WEIGHTS


def test_an_archive_with_only_the_end_marker_block_extracts(tmp_path: Path) -> None:
    """One zero block after the last member (some writers stop there), no record padding."""
    archive = tmp_path / "a"
    archive.write_bytes(PLAIN[:1024 + 512 + len(WEIGHTS) + 512])
    extract_tar(archive, tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == WEIGHTS


@pytest.mark.parametrize("kind", sorted(DAMAGED))
def test_damaged_archives_are_refused(tmp_path: Path, kind: str) -> None:
    archive = tmp_path / "a"
    archive.write_bytes(DAMAGED[kind]())
    with pytest.raises(UnsafeArchive):
        extract_tar(archive, tmp_path / "out")
