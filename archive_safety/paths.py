"""Relative paths inside a version, checked before any file is read or written by them."""

from __future__ import annotations

from pathlib import PurePosixPath


def safe_relpath(path: str) -> str:
    """A relative POSIX path inside a version; refuses '..', absolute paths and empties."""
    p = PurePosixPath(path)
    if not path or p.is_absolute() or any(part in ("", ".", "..") for part in p.parts) \
            or "\\" in path or "\x00" in path:
        raise ValueError(f"invalid file path {path!r}")
    return str(p)
