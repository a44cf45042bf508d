"""Hostile input: each case is refused with a 4xx problem document AND writes nothing (every
table's row count and every entry under the artifact root, staging included, are the same
after it). Path traversal, evil and bomb archives, model sources outside
ALKN_MODEL_SOURCE_ROOTS, oversized input, control characters and unpaired surrogates.

(test_api.py has the plain refusals: malformed JSON, unknown fields, the body limit, the basic
evil archives; these go further and check the database and the store themselves.)
Run alone: `.venv/bin/pytest -q tests/test_hostile.py`.
"""

from __future__ import annotations

import base64
import io
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text

from api.app import create_app
from registry.db import session_scope
from registry.models import ForgetRequest, Model, Version

from .apikit import MAX_JSON_BYTES, MAX_UPLOAD_BYTES, QA, ApiWorld, raw_request, write_model_dir
from .test_api import assert_problem
from .test_archive_safety import DAMAGED

JSON = {"Content-Type": "application/json"}


def post_json(world: ApiWorld, url: str, body: Any, **headers: str) -> Any:
    # json.dumps escapes (ensure_ascii): lone surrogates and NULs reach the server as the
    # JSON escapes a hostile client would send.
    return world.client.post(url, content=json.dumps(body), headers={**JSON, **headers})


def raw_problem(status: int, headers: dict[str, str], body: bytes, expected: int) -> dict[str, Any]:
    assert status == expected, body[:500]
    assert headers["content-type"].startswith("application/problem+json")
    doc: dict[str, Any] = json.loads(body)
    assert doc["status"] == expected and doc["detail"]
    return doc


# --------------------------------------------------------------------------------------------
# Path traversal in the file routes
# --------------------------------------------------------------------------------------------


def _storage_key(world: ApiWorld) -> str:
    with session_scope(world.db_url) as s:
        return s.scalars(select(Version.storage_key).join(Model, Model.id == Version.model_id)
                         .where(Model.name == world.model, Version.number == 1)).one()


TRAVERSALS = [
    "../../../../../../etc/passwd",  # raw dots: a server hands them over as they are
    "..%2f..%2f..%2f..%2fetc%2fpasswd",
    "%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "%252e%252e%252fetc%252fpasswd",  # double encoding
    "/etc/passwd",  # .../files//etc/passwd: an absolute path
    "%2Fetc%2Fpasswd",
    "..\\..\\..\\etc\\passwd",
    "..%5c..%5c..%5cetc%5cpasswd",
    "config.json%00.txt",
    "config.json/../config.json",
    "./config.json",
    "{key}/config.json",  # the store's own layout: <model id>/<version key>/<file>
    "../../{key}/config.json",
    "..%2f..%2f{key}%2fconfig.json",
]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("path", TRAVERSALS)
def test_file_route_traversal(api_world: ApiWorld, method: str, path: str) -> None:
    key = _storage_key(api_world)
    auth = dict(api_world.client.headers)
    url = f"/v1/models/{api_world.model}/versions/1/files/{path.replace('{key}', key)}"
    with api_world.unchanged():
        status, headers, body = raw_request(api_world.app, method, url, auth)
    assert status == 404, (url, status, body[:300])
    if method == "GET":  # HEAD has no body
        raw_problem(status, headers, body, 404)
        assert b"root:" not in body and b"model_type" not in body


def test_raw_request_reaches_the_file(api_world: ApiWorld) -> None:
    """The helper above is a faithful client: the same route with a plain path works."""
    status, _, body = raw_request(api_world.app, "GET",
                                  f"/v1/models/{api_world.model}/versions/1/files/config.json",
                                  dict(api_world.client.headers))
    assert status == 200 and body == (api_world.model_dir / "config.json").read_bytes()


@pytest.mark.parametrize("url", [
    "/v1/models/..%2f..%2fetc/versions/1/files/config.json",
    "/v1/models/../../etc/versions/1/archive",
    "/v1/models/{model}/versions/..%2f1/files/config.json",
    "/v1/models/{model}/versions/../1/archive",
    "/v1/models/{model}/versions/%2e%2e/evaluation",
    "/v1/models/{model}/versions/1%00/archive",
])
def test_traversal_in_names_and_refs(api_world: ApiWorld, url: str) -> None:
    with api_world.unchanged():
        status, headers, body = raw_request(api_world.app, "GET",
                                            url.replace("{model}", api_world.model),
                                            dict(api_world.client.headers))
    raw_problem(status, headers, body, 404)


# --------------------------------------------------------------------------------------------
# Archives: links, devices, traversal, bombs
# --------------------------------------------------------------------------------------------


def _member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"x",
            linkname: str = "", **pax: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.pax_headers = kind, linkname, dict(pax)
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def _archive(*members: tuple[tarfile.TarInfo, bytes], fmt: int = tarfile.PAX_FORMAT,
             compress: bool = True) -> bytes:
    """A .tar.gz with a valid config.json first, then `members` as given."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if compress else "w", format=fmt) as tf:
        for info, data in (_member("config.json", data=b"{}"), *members):
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


EVIL_ARCHIVES: dict[str, Callable[[], bytes]] = {
    "absolute": lambda: _archive(_member("/alkn-escape.txt")),
    "dotdot": lambda: _archive(_member("../escape.txt")),
    "dotdot-nested": lambda: _archive(_member("sub/../../escape.txt")),
    "dot-dotdot": lambda: _archive(_member("./../escape.txt")),
    "dotdot-directory": lambda: _archive(_member("..", tarfile.DIRTYPE)),
    "backslash": lambda: _archive(_member("..\\..\\escape.txt")),
    "dotdot-gnu-longname": lambda: _archive(_member("a/" * 60 + "../" * 70 + "escape.txt"),
                                            fmt=tarfile.GNU_FORMAT),
    "pax-path-dotdot": lambda: _archive(_member("harmless.txt", path="../../escape.txt")),
    "pax-path-nul": lambda: _archive(_member("harmless.txt", path="weights\x00.bin")),
    "long-path": lambda: _archive(_member("d/" * 3000 + "x.bin"), fmt=tarfile.GNU_FORMAT),
    "long-component": lambda: _archive(_member("c" * 300 + ".bin")),
    "symlink-out": lambda: _archive(_member("link", tarfile.SYMTYPE, linkname="/etc/passwd")),
    "symlink-dir-then-file": lambda: _archive(_member("d", tarfile.SYMTYPE, linkname="/tmp"),
                                              _member("d/escape.txt")),
    "hardlink-out": lambda: _archive(_member("hard", tarfile.LNKTYPE, linkname="/etc/passwd")),
    "hardlink-in": lambda: _archive(_member("hard", tarfile.LNKTYPE, linkname="config.json")),
    "char-device": lambda: _archive(_member("zero", tarfile.CHRTYPE)),
    "block-device": lambda: _archive(_member("disk", tarfile.BLKTYPE)),
    "fifo": lambda: _archive(_member("pipe", tarfile.FIFOTYPE)),
    "truncated": lambda: _archive(_member("model.safetensors", data=os.urandom(4096)))[:-200],
    # damaged in ways tarfile alone reads past, storing bad bytes or dropping files
    "gzip-crc-mismatch": DAMAGED["gzip-crc"],
    "tar-cut-in-a-header": DAMAGED["tar-cut-in-a-header"],
    "uncompressed-symlink": lambda: _archive(
        _member("link", tarfile.SYMTYPE, linkname="../../x"), compress=False),
}


@pytest.mark.parametrize("kind", sorted(EVIL_ARCHIVES))
def test_evil_archive(api_world: ApiWorld, kind: str) -> None:
    url = f"/v1/models/{api_world.model}/versions:upload"
    with api_world.unchanged():
        assert_problem(api_world.client.post(url, content=EVIL_ARCHIVES[kind]()), 422)
    assert not Path("/alkn-escape.txt").exists() and not Path("/tmp/escape.txt").exists()


def _zeros_member(name: str, size: int) -> tuple[tarfile.TarInfo, io.IOBase]:
    info = tarfile.TarInfo(name)
    info.size = size
    return info, io.BytesIO(bytes(size))


def _bomb(*members: tuple[tarfile.TarInfo, io.IOBase], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=fmt, compresslevel=9) as tf:
        for info, data in members:
            tf.addfile(info, data)
    return buf.getvalue()


BOMBS: dict[str, Callable[[], bytes]] = {
    # one member four times the limit: refused from its header, before a byte is written
    "one-big-member": lambda: _bomb(_zeros_member("config.json", 2),
                                    _zeros_member("model.safetensors", 4 * MAX_UPLOAD_BYTES)),
    # many members, each under the limit, together over it
    "many-members": lambda: _bomb(*(_zeros_member(f"shard-{i}.bin", MAX_UPLOAD_BYTES // 4)
                                    for i in range(8))),
    # metadata tarfile would hold in memory whole
    "pax-header": lambda: _bomb((_pax_info("config.json", "z" * (4 * MAX_UPLOAD_BYTES)),
                                 io.BytesIO(b""))),
    "gnu-longname": lambda: _bomb((tarfile.TarInfo("n" * (4 * MAX_UPLOAD_BYTES)),
                                   io.BytesIO(b"")), fmt=tarfile.GNU_FORMAT),
}


def _pax_info(name: str, comment: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.pax_headers = {"comment": comment}
    return info


@pytest.mark.parametrize("kind", sorted(BOMBS))
def test_decompression_bomb(api_world: ApiWorld, kind: str) -> None:
    bomb = BOMBS[kind]()
    assert len(bomb) < MAX_UPLOAD_BYTES // 8  # small on the wire: the body limit lets it in
    url = f"/v1/models/{api_world.model}/versions:upload"
    with api_world.unchanged():
        body = assert_problem(api_world.client.post(url, content=bomb), 413)
    assert str(MAX_UPLOAD_BYTES) in body["detail"] or "metadata" in body["detail"]


# --------------------------------------------------------------------------------------------
# Model source paths
# --------------------------------------------------------------------------------------------


def _outside(world: ApiWorld) -> Path:
    """A valid model directory outside every allowed root."""
    return write_model_dir(world.source_root.parent / "outside-model")


SOURCES: dict[str, Callable[[ApiWorld], str]] = {
    "etc": lambda w: "/etc",
    "filesystem-root": lambda w: "/",
    "relative": lambda w: "tiny",
    "home": lambda w: "~",
    "root-parent": lambda w: f"{w.source_root}/..",
    "dotdot-escape": lambda w: f"{w.source_root}/tiny/../../{_outside(w).name}",
    "outside-dir": lambda w: str(_outside(w)),
    "symlink-to-outside": lambda w: str(_link(w, "to-outside", _outside(w))),
    "symlink-to-root-fs": lambda w: str(_link(w, "to-slash", Path("/"))),
    "symlink-chain": lambda w: str(_link(w, "chain", _link(w, "chain-2", _outside(w)))),
    "root-itself": lambda w: str(w.source_root),  # allowed, but no config.json
    "a-file": lambda w: str(w.model_dir / "config.json"),
    "nul-byte": lambda w: f"{w.model_dir}\x00/etc",
    "config-symlink-out": lambda w: str(_dir_with(w, "cfg-link", lambda d: (
        d / "config.json").symlink_to("/etc/hostname"))),
    "subdir-symlink-out": lambda w: str(_dir_with(w, "sub-link", lambda d: (
        d / "tokenizer").symlink_to(_outside(w), target_is_directory=True))),
    "weights-symlink-out": lambda w: str(_dir_with(w, "weights-link", lambda d: (
        d / "extra.bin").symlink_to(_outside(w) / "model.safetensors"))),
    "fifo-inside": lambda w: str(_dir_with(w, "fifo", lambda d: os.mkfifo(d / "pipe"))),
}


def _link(world: ApiWorld, name: str, target: Path) -> Path:
    link = world.source_root / name
    if not link.is_symlink():
        link.symlink_to(target, target_is_directory=True)
    return link


def _dir_with(world: ApiWorld, name: str, plant: Callable[[Path], Any]) -> Path:
    """A model directory inside the root with something planted in it."""
    d = world.source_root / name
    if not d.exists():
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"\0" * 64)
        plant(d)
        if not (d / "config.json").exists() and not (d / "config.json").is_symlink():
            (d / "config.json").write_text("{}")
    return d


@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_source_outside_roots(api_world: ApiWorld, kind: str) -> None:
    path = SOURCES[kind](api_world)
    with api_world.unchanged():
        body = assert_problem(post_json(api_world, "/v1/models",
                                        {"name": f"src-{kind}", "source": {"path": path}}), 422)
    assert body["errors"][0]["loc"][:2] == ["body", "source"]
    assert str(api_world.source_root) not in json.dumps(body)  # no server path echoed


def test_source_inside_root_still_works(api_world: ApiWorld) -> None:
    """The refusals above are not a refusal of everything."""
    r = post_json(api_world, "/v1/models", {"name": "src-ok",
                                            "source": {"path": str(api_world.model_dir)}})
    assert r.status_code == 201, r.text


# --------------------------------------------------------------------------------------------
# Size: huge lists and strings, numbers out of range
# --------------------------------------------------------------------------------------------


def _over_json_limit(item: dict[str, str]) -> list[dict[str, str]]:
    n = MAX_JSON_BYTES // len(json.dumps(item)) + 10
    return [item] * n


OVERSIZED: dict[str, tuple[str, Callable[[str], dict[str, Any]], int]] = {
    # the body limit (ALKN_MAX_JSON_BYTES): 413 before anything is parsed
    "forget-items": ("forget", lambda m: {"items": _over_json_limit({"text": "x" * 50})}, 413),
    "forget-one-huge-string": ("forget", lambda m: {"items": [{"text": "x" * MAX_JSON_BYTES}]},
                               413),
    "retain-set": ("models", lambda m: {"name": "big", "retain_set": _over_json_limit(QA[0])},
                   413),
    "eval-sets": ("models", lambda m: {"name": "big", "eval_sets": {
        f"s{i}": [{"text": "y" * 100}] for i in range(MAX_JSON_BYTES // 100)}}, 413),
    # the published field limits: 422
    "description": ("models", lambda m: {"name": "big", "description": "d" * 10_001}, 422),
    "qa-template": ("models", lambda m: {"name": "big",
                                         "qa_template": "{question}{answer}" + "t" * 10_000},
                    422),
    "name": ("models", lambda m: {"name": "n" * 65}, 422),
    "source-path": ("models", lambda m: {"name": "big", "source": {"path": "/" + "p" * 4096}},
                    422),
    "eval-set-name": ("models", lambda m: {"name": "big", "eval_sets": {"e" * 65: QA}}, 422),
    "method": ("forget", lambda m: {"items": QA, "method": "m" * 65}, 422),
    "base-version": ("forget", lambda m: {"items": QA, "base_version": 2**40}, 422),
}


@pytest.mark.parametrize("kind", sorted(OVERSIZED))
def test_oversized_input(api_world: ApiWorld, kind: str) -> None:
    route, make, status = OVERSIZED[kind]
    url = "/v1/models" if route == "models" else \
        f"/v1/models/{api_world.model}/forget-requests"
    with api_world.unchanged():
        assert_problem(post_json(api_world, url, make(api_world.model)), status)


def test_item_bounds_hold_under_the_default_body_limit(api_world: ApiWorld) -> None:
    """The worlds here use a 64 KiB body limit; at the default (32 MiB) a body could hold a
    million items or a 30 MB answer. The item and string bounds refuse them with 422, and
    they are published in /openapi.json."""
    from api import schemas
    from config.settings import Settings

    default = Settings.model_fields["max_json_bytes"].default
    assert default >= 32 * 2**20
    settings = api_world.settings.model_copy(update={"max_json_bytes": default})
    long = "x" * (schemas.MAX_STRING_CHARS + 1)
    forget = f"/v1/models/{api_world.model}/forget-requests"
    cases: list[tuple[str, dict[str, Any]]] = [
        (forget, {"items": [{"text": "x"}] * (schemas.MAX_FORGET_ITEMS + 1)}),
        (forget, {"items": [{"question": "q?", "answer": long}]}),
        (forget, {"items": [{"text": "t", "note": long}]}),
        (forget, {"items": [{**QA[0], "perturbed_answer": ["p"] * (schemas.MAX_PERTURBED + 1)}]}),
        (forget, {"items": QA, "params": {"note": long}}),
        ("/v1/models", {"name": "big",
                        "retain_set": [{"text": "x"}] * (schemas.MAX_SET_ITEMS + 1)}),
        ("/v1/models", {"name": "big", "eval_sets": {f"s{i}": QA for i in range(
            schemas.MAX_EVAL_SETS + 1)}}),
    ]
    with TestClient(create_app(settings)) as c, api_world.unchanged():
        c.headers.update(api_world.client.headers)
        for url, body in cases:
            r = c.post(url, content=json.dumps(body), headers={"Content-Type": "application/json"})
            assert len(r.request.content) < default  # under the body limit: the bounds refused it
            assert_problem(r, 422)
        published = c.get("/openapi.json").json()["components"]["schemas"]
    assert published["ForgetRequestCreate"]["properties"]["items"]["maxItems"] == \
        schemas.MAX_FORGET_ITEMS


def test_oversized_headers_queries_and_numbers(api_world: ApiWorld) -> None:
    c, m = api_world.client, api_world.model
    with api_world.unchanged():
        assert_problem(post_json(api_world, f"/v1/models/{m}/forget-requests", {"items": QA},
                                 **{"Idempotency-Key": "k" * 256}), 422)
        assert_problem(c.get("/v1/forget-requests", params={"cursor": "c" * 513}), 422)
        assert_problem(c.put(f"/v1/models/{m}/aliases/{'a' * 65}", json={"version": 1}), 422)
        assert_problem(c.put(f"/v1/models/{m}/aliases/prod", json={"version": 2**40}), 422)
        # past Python's 4300-digit int() limit too (int() raised ValueError: a 500)
        for ref in ("99999999999999999999", str(2**31), "0", "-1", "1e3", "²", "١", "9" * 4301):
            assert_problem(c.get(f"/v1/models/{m}/versions/{ref}"), 404)
            assert_problem(c.post(f"/v1/models/{m}/versions/{ref}:revoke"), 404)
        assert c.get(f"/v1/models/{m}/versions/{'0' * 20}1").json()["version"] == 1
        r = c.get(f"/v1/models/{m}/versions/{'9' * 4301}")
        assert len(r.json()["detail"]) < 200, r.text  # the ref quoted, cut
        assert_problem(c.get(f"/api/models/default/{m}/revision/v{'9' * 4301}"), 404)


def test_a_key_twice_in_one_object_is_refused(api_world: ApiWorld) -> None:
    """Python's json keeps the last of duplicate keys, a gateway's parser may keep the
    first: the two would disagree about what was asked. 400, as malformed JSON."""
    c, m = api_world.client, api_world.model
    bodies = [("POST", "/v1/models", '{"name": "a", "name": "b", "source": {"path": "/x"}}'),
              ("POST", f"/v1/models/{m}/forget-requests",
               '{"items": [{"question": "Q?", "answer": "A.", "answer": "B."}]}'),
              ("POST", f"/v1/models/{m}/forget-requests",
               '{"items": [{"text": "t"}], "params": {"lr": 0.001, "lr": 0.5}}'),
              ("PUT", f"/v1/models/{m}/aliases/dup", '{"version": 1, "version": 2}')]
    with api_world.unchanged():
        for method, url, body in bodies:
            r = c.request(method, url, content=body, headers=JSON)
            assert_problem(r, 400)
            assert "appears twice in one object" in r.json()["detail"], r.text
            assert "at character" not in r.json()["detail"]
    ok = c.request("PUT", f"/v1/models/{m}/aliases/dup", content='{"version": 1}',
                   headers=JSON)
    assert ok.status_code == 200, ok.text  # the same route without the repeat
    assert c.delete(f"/v1/models/{m}/aliases/dup").status_code == 204


def test_integer_fields_refuse_strings_booleans_and_floats(api_world: ApiWorld) -> None:
    """As method params do: "1", true and 1.0 are not read as 1."""
    c, m = api_world.client, api_world.model
    with api_world.unchanged():
        for bad in ("1", " 1 ", True, 1.0):
            for field in ("eval_max_items", "eval_detail_items", "min_gpu_memory_gb"):
                r = c.post("/v1/models", json={"name": "lax", "source": {
                    "path": str(api_world.model_dir)}, field: bad})
                assert_problem(r, 422)
                assert field in r.text
            assert_problem(c.put(f"/v1/models/{m}/aliases/lax", json={"version": bad}), 422)
            assert_problem(post_json(api_world, f"/v1/models/{m}/forget-requests",
                                     {"items": QA, "base_version": bad}), 422)


# --------------------------------------------------------------------------------------------
# Control characters, unpaired surrogates, bidi marks
# --------------------------------------------------------------------------------------------

# NUL (PostgreSQL text cannot hold one), ESC, DEL, a C1 control, an unpaired surrogate
BAD = {"nul": "\x00", "esc": "\x1b", "del": "\x7f", "c1": "\x9b", "surrogate": "\ud800"}


def _forget_fields(bad: str) -> dict[str, dict[str, Any]]:
    qa = {"question": "Where?", "answer": "There."}
    return {
        "text": {"items": [{"text": f"a{bad}b"}]},
        "question": {"items": [{**qa, "question": f"Where{bad}?"}]},
        "answer": {"items": [{**qa, "answer": f"{bad}"}]},
        "paraphrased": {"items": [{**qa, "paraphrased_answer": f"x{bad}"}]},
        "perturbed": {"items": [{**qa, "perturbed_answer": ["ok", f"x{bad}"]}]},
        "extra-value": {"items": [{**qa, "person": f"Ilsa{bad}"}]},
        "key": {"items": [{**qa, f"k{bad}": "v"}]},
        "second-item": {"items": [qa, {"text": f"{bad}{bad}"}]},
        "method": {"items": [qa], "method": f"alkn{bad}"},
        "params-key": {"items": [qa], "params": {f"lr{bad}": 0.1}},
        "params-value": {"items": [qa], "params": {"qa_template": f"{{question}}{bad}{{answer}}"}},
    }


def _model_fields(bad: str) -> dict[str, dict[str, Any]]:
    return {
        "name": {"name": f"m{bad}"},
        "description": {"name": "ctl", "description": f"d{bad}"},
        "qa-template": {"name": "ctl", "qa_template": f"{{question}} {bad} {{answer}}"},
        "source-path": {"name": "ctl", "source": {"path": f"/tmp/{bad}/m"}},
        "default-params-key": {"name": "ctl", "default_params": {f"lr{bad}": 0.1}},
        "default-params-value": {"name": "ctl", "default_params": {"mask_rule": f"r{bad}"}},
        "retain-set": {"name": "ctl", "retain_set": [{"text": f"r{bad}"}]},
        "holdout-set": {"name": "ctl", "holdout_set": [{"question": f"q{bad}", "answer": "a"}]},
        "eval-set-name": {"name": "ctl", "eval_sets": {f"e{bad}": QA}},
        "eval-set-item": {"name": "ctl", "eval_sets": {"e": [{"text": f"x{bad}"}]}},
    }


CONTROL_CASES = [(route, field, bad) for bad in sorted(BAD)
                 for route, fields in (("forget", _forget_fields("")),
                                       ("models", _model_fields("")))
                 for field in sorted(fields)]


@pytest.mark.parametrize(("route", "field", "bad"), CONTROL_CASES)
def test_control_characters(api_world: ApiWorld, route: str, field: str, bad: str) -> None:
    if route == "forget":
        url, body = f"/v1/models/{api_world.model}/forget-requests", \
            _forget_fields(BAD[bad])[field]
    else:
        url, body = "/v1/models", _model_fields(BAD[bad])[field]
    with api_world.unchanged():
        doc = assert_problem(post_json(api_world, url, body), 422)
    assert doc["errors"] and doc["errors"][0]["loc"][0] == "body"
    assert BAD[bad] not in json.dumps(doc, ensure_ascii=False)  # never echoed back


def test_nan_and_infinity(api_world: ApiWorld) -> None:
    url = f"/v1/models/{api_world.model}/forget-requests"
    with api_world.unchanged():
        for literal in (b"NaN", b"Infinity", b"-Infinity", b"1e999"):
            body = b'{"items": [{"text": "a", "weight": ' + literal + b"}]}"
            assert_problem(api_world.client.post(url, content=body, headers=JSON), 422)


BIDI = "\u202e\u200f\u2067"  # right-to-left override, right-to-left mark, isolate


def test_bidi_marks_in_identifiers_are_refused(api_world: ApiWorld) -> None:
    c, m = api_world.client, api_world.model
    with api_world.unchanged():
        assert_problem(post_json(api_world, "/v1/models", {"name": f"demo{BIDI}"}), 422)
        assert_problem(c.put(f"/v1/models/{m}/aliases/prod{BIDI}", json={"version": 1}), 422)
        assert_problem(post_json(api_world, f"/v1/models/{m}/forget-requests",
                                 {"items": QA, "method": f"alkn{BIDI}"}), 422)
        assert_problem(c.get(f"/v1/models/{m}{BIDI}"), 404)


def test_bidi_marks_in_text_are_kept_verbatim(api_world: ApiWorld) -> None:
    """Personal data is written in right-to-left scripts too: a forget item must reach the
    worker exactly as the model saw it, so bidi marks in free text are data, not attacks
    (they are never rendered by the API: items are not returned at all)."""
    text = f"\u05d0\u05d9\u05dc\u05e1\u05d4 {BIDI} lives in Port Tavrin"
    r = post_json(api_world, f"/v1/models/{api_world.model}/forget-requests",
                  {"items": [{"text": text}], "method": "npo"})
    assert r.status_code == 202, r.text
    with session_scope(api_world.db_url) as s:
        req = s.get(ForgetRequest, r.json()["id"])
        assert req is not None and req.items == [{"text": text}]
    m = post_json(api_world, "/v1/models", {"name": "bidi", "description": text})
    assert m.status_code == 201 and m.json()["description"] == text


# --------------------------------------------------------------------------------------------
# Path, query and header values the database cannot take
# --------------------------------------------------------------------------------------------


def _cursor(ts: str, row_id: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps([ts, row_id]).encode()).decode().rstrip("=")


def test_unstorable_path_query_and_header_values(api_world: ApiWorld) -> None:
    """A NUL byte or an out-of-range number must be a 404/422, never a database error."""
    m, auth = api_world.model, dict(api_world.client.headers)

    def get(url: str, expected: int, **headers: str) -> None:
        raw_problem(*raw_request(api_world.app, "GET", url, {**auth, **headers}), expected)

    with api_world.unchanged():
        for url in ("/v1/models/a%00b", f"/v1/models/{m}/versions/a%00",
                    f"/v1/models/{m}/versions/1/files/a%00", "/v1/forget-requests/a%00",
                    "/v1/jobs/a%00", "/v1/jobs/a%00/events",
                    f"/v1/models/{m}/versions/%C2%B2", "/v1/models/%ED%A0%80"):
            get(url, 404)
        get("/v1/forget-requests?model=a%00", 404)
        get("/v1/jobs?model=a%00", 404)
        for cursor in (_cursor("2024-01-01T00:00:00+00:00", 5),  # wrong id type
                       _cursor("2024-01-01T00:00:00+00:00", "a\x00"),
                       _cursor("2024-01-01T00:00:00+00:00", "\ud800"),
                       _cursor("0001-01-01T00:00:00+05:00", "x"),  # not representable in UTC
                       _cursor("2024-01-01T00:00:00+00:00", 2**70)):
            for route in ("/v1/models", "/v1/forget-requests", "/v1/jobs",
                          f"/v1/models/{m}/versions"):
                get(f"{route}?cursor={cursor}", 422)
        status, headers, body = raw_request(
            api_world.app, "POST", f"/v1/models/{m}/forget-requests",
            {**auth, **JSON, "Idempotency-Key": "a\x00b"}, json.dumps({"items": QA}).encode())
        raw_problem(status, headers, body, 422)
        status, headers, body = raw_request(
            api_world.app, "DELETE", f"/v1/models/{m}/aliases/a%00", auth)
        raw_problem(status, headers, body, 404)
    # a Range with a non-ASCII digit ('²' is a latin-1 byte) is ignored, like any bad Range
    status, _, body = raw_request(api_world.app, "GET",
                                  f"/v1/models/{m}/versions/1/files/config.json",
                                  {**auth, "Range": "bytes=\xb2-"})
    assert status == 200 and body == (api_world.model_dir / "config.json").read_bytes()


def test_a_value_the_database_refuses_is_a_422(api_world: ApiWorld) -> None:
    """The safety net behind the validators: a DataError (a NUL byte or an out-of-range
    number that reached the database anyway) is the client's 422, not a 500."""
    app = create_app(api_world.settings)

    def refused() -> None:
        with session_scope(api_world.db_url) as s:
            s.execute(text("SELECT CAST(:v AS integer)"), {"v": str(2**40)})

    app.add_api_route("/refused", refused)
    with TestClient(app, raise_server_exceptions=False) as c:
        body = assert_problem(c.get("/refused"), 422)
    assert "integer" not in body["detail"] and "SELECT" not in json.dumps(body)
