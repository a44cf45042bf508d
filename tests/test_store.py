"""The artifact store: local directory and S3 (boto3 against moto's in-process S3)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from archive_safety.paths import safe_relpath
from registry.store import LocalStore, S3Store


def _version_dir(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text('{"model_type": "llama"}')
    (root / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 5000)
    return root


def _check(store: LocalStore | S3Store, src: Path, tmp: Path) -> None:
    files = store.publish_dir(src, "m1/v2-abc")
    assert [f.path for f in files] == ["config.json", "sub/weights.bin"]
    blob = (src / "sub" / "weights.bin").read_bytes()
    assert files[1].size == len(blob) and files[1].sha256 == hashlib.sha256(blob).hexdigest()
    assert b"".join(store.open_range("m1/v2-abc", "sub/weights.bin")) == blob
    assert b"".join(store.open_range("m1/v2-abc", "sub/weights.bin", 1000, 1999)) == \
        blob[1000:2000]
    assert store.exists("m1/v2-abc", "config.json")
    got = store.fetch_dir("m1/v2-abc", tmp / "fetched")
    assert (got / "sub" / "weights.bin").read_bytes() == blob
    store.ping()
    store.delete("m1/v2-abc")
    assert not store.exists("m1/v2-abc", "config.json")


def test_local_store(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "artifacts")
    _check(store, _version_dir(tmp_path / "src"), tmp_path)
    assert not any((tmp_path / "artifacts" / ".tmp").iterdir())  # staging cleaned by rename


def test_s3_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    moto = pytest.importorskip("moto")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with moto.mock_aws():
        import boto3

        boto3.client("s3").create_bucket(Bucket="alkn-test")
        _check(S3Store("s3://alkn-test/prefix"), _version_dir(tmp_path / "src"), tmp_path)


@pytest.mark.parametrize("bad", ["", "/etc/passwd", "../x", "a/../../b", "a\\\\b"])
def test_safe_relpath_refuses_escapes(bad: str) -> None:
    with pytest.raises(ValueError):
        safe_relpath(bad)


def test_gc_deletes_only_unreferenced_keys(pg_url: str, tmp_path: Path) -> None:
    from registry.db import session_scope
    from registry.gc import collect_orphans
    from registry.models import Version

    from .services import add_model_row

    store = LocalStore(tmp_path / "artifacts")
    src = _version_dir(tmp_path / "src")
    with session_scope(pg_url) as s:
        model = add_model_row(s, f"gc-{tmp_path.name}", "gc")
        kept = f"{model.id}/v1-aaaa"
        s.add(Version(model_id=model.id, number=1, status="ready", storage_key=kept))
    store.publish_dir(src, kept)
    store.publish_dir(src, kept + "-state")
    store.publish_dir(src, f"{model.id}/v2-dead")  # a worker died before committing v2
    stale = store.staging_dir()
    assert collect_orphans(pg_url, store, older_than=3600) == []  # too recent: grace period
    deleted = collect_orphans(pg_url, store, older_than=0)
    assert sorted(deleted) == sorted([f"{model.id}/v2-dead", f".tmp/{stale.name}"])
    assert store.exists(kept, "config.json") and store.exists(kept + "-state", "config.json")
    assert not store.exists(f"{model.id}/v2-dead", "config.json")


def test_file_range_iterates_and_reads_alike(tmp_path: Path) -> None:
    """What the download and archive routes send: plain iteration (CHUNK reads) and
    `read(n)` of any size give the same bytes, for whole files and ranges."""
    import os

    from registry.store import CHUNK, FileRange

    blob = os.urandom(3 * CHUNK + 12345)
    path = tmp_path / "blob.bin"
    path.write_bytes(blob)
    for start, end in ((0, None), (5, len(blob) - 1), (CHUNK - 1, 2 * CHUNK + 7), (9, 9)):
        want = blob[start:None if end is None else end + 1]
        chunks = list(FileRange(path, start, end))
        assert b"".join(chunks) == want and all(len(c) <= CHUNK for c in chunks)
        for size in (1000, CHUNK, 4 * CHUNK):
            rng, got = FileRange(path, start, end), b""
            while chunk := rng.read(size):
                assert len(chunk) <= size
                got += chunk
            assert got == want
            assert rng.read(10) == b"" and next(rng, None) is None  # closed at the end
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    assert list(FileRange(empty)) == [] and FileRange(empty).read(10) == b""
