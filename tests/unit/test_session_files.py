"""A session's workspace files over HTTP (GET /v1/sessions/{id}/files[/{path}]), on a real server
(FakeEngine) whose workspace is written by the real sandboxed bash tool: listing, downloads,
and everything sandboxed code could plant to read outside the workspace (symlinks, `..`,
FIFOs), plus other keys' sessions."""

from __future__ import annotations

import http.client
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx
import pytest

import dialects.session_files
from runtime.engine.fake import FakeEngine
from tests.conftest import FakeServer, serve_fake
from tests.servers import session_tool

pytestmark = [
    pytest.mark.sandbox,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
]

SESSION = "files-test"
PLANT = """
mkdir -p out/deep && printf 'hello\\n' > out/report.txt && printf 'x' > out/deep/one.bin
printf 'spaced' > 'a file é.txt'
ln -s /etc/passwd passwd-link && ln -s /etc etc-link && ln -s out/report.txt inner-link
mkfifo pipe
"""


@pytest.fixture
def server(tmp_path: Path, fake_engine: FakeEngine) -> Iterator[FakeServer]:
    with serve_fake(tmp_path, fake_engine) as fake:
        result = session_tool(fake.base_url, fake.key, SESSION, "bash", {"command": PLANT}, timeout=120)
        assert not result["is_error"], result
        yield fake


def get(server: FakeServer, path: str, key: str | None = None) -> httpx.Response:
    return httpx.get(f"{server.base_url}{path}", headers={"x-api-key": key or server.key}, timeout=30)


def raw_get(server: FakeServer, path: str) -> tuple[int, bytes]:
    """GET with the path sent exactly as written (httpx would resolve `..` segments first)."""
    where = urlsplit(server.base_url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
    try:
        connection.request("GET", path, headers={"x-api-key": server.key})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_the_listing_has_the_regular_files_only(server: FakeServer) -> None:
    listing = get(server, f"/v1/sessions/{SESSION}/files").json()
    assert listing["object"] == "list" and listing["session_id"] == SESSION and listing["truncated"] is False
    assert [f["path"] for f in listing["data"]] == ["a file é.txt", "out/deep/one.bin", "out/report.txt"]
    report = listing["data"][2]
    assert report["size_bytes"] == 6 and abs(report["modified"] - time.time()) < 600


def test_a_long_listing_says_it_is_truncated(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dialects.session_files, "MAX_LISTED", 2)
    listing = get(server, f"/v1/sessions/{SESSION}/files").json()
    assert len(listing["data"]) == 2 and listing["truncated"] is True


def test_a_download_is_the_file_as_an_attachment(server: FakeServer) -> None:
    response = get(server, f"/v1/sessions/{SESSION}/files/out/report.txt")
    assert response.status_code == 200
    assert response.content == b"hello\n"
    assert response.headers["content-type"].startswith("text/plain")
    assert response.headers["content-disposition"] == "attachment; filename*=UTF-8''report.txt"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in response.headers["content-security-policy"]
    spaced = get(server, f"/v1/sessions/{SESSION}/files/{quote('a file é.txt')}")
    assert spaced.content == b"spaced"
    assert spaced.headers["content-disposition"].endswith(quote("a file é.txt"))


@pytest.mark.parametrize(
    "path",
    [
        "passwd-link",  # a symlink out of the workspace
        "etc-link/passwd",  # a symlinked directory on the way
        "inner-link",  # even one pointing inside: links are never followed
        "pipe",  # a FIFO (opening it for reading would block)
        "out",  # a directory
        "out/missing.txt",
        "out/report.txt/x",
        # a name longer than the filesystem allows (ENAMETOOLONG, once a 500), as the file or a
        # directory on the way (200 two-byte characters)
        pytest.param("x" * 300, id="file-name-too-long"),
        pytest.param("out/" + "é" * 200 + "/report.txt", id="directory-name-too-long"),
    ],
)
def test_anything_but_a_regular_file_inside_is_404(server: FakeServer, path: str) -> None:
    started = time.monotonic()
    response = get(server, f"/v1/sessions/{SESSION}/files/{path}")
    assert response.status_code == 404, response.text
    assert response.json()["error"]["type"] == "not_found_error"
    assert b"root:" not in response.content
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    "path",
    [
        "../../../keys.sqlite3",  # the data dir's key database, three levels up
        "out/../../../../keys.sqlite3",
        "%2e%2e/%2e%2e/%2e%2e/keys.sqlite3",
        "..%2F..%2F..%2Fkeys.sqlite3",
        "./out/report.txt",
    ],
)
def test_dot_segments_never_leave_the_workspace(server: FakeServer, path: str) -> None:
    status, body = raw_get(server, f"/v1/sessions/{SESSION}/files/{path}")
    assert status in (400, 404), (status, body)
    assert b"SQLite" not in body


def test_another_keys_session_is_not_found(server: FakeServer) -> None:
    _, other = server.keys.create("other")
    assert get(server, f"/v1/sessions/{SESSION}/files", other).status_code == 404
    assert get(server, f"/v1/sessions/{SESSION}/files/out/report.txt", other).status_code == 404
    assert get(server, "/v1/sessions/never-made/files").status_code == 404


def test_a_deleted_sessions_files_are_gone(server: FakeServer) -> None:
    deleted = httpx.delete(f"{server.base_url}/v1/sessions/{SESSION}", headers={"x-api-key": server.key}, timeout=30)
    assert deleted.status_code == 200
    assert get(server, f"/v1/sessions/{SESSION}/files").status_code == 404
    assert get(server, f"/v1/sessions/{SESSION}/files/out/report.txt").status_code == 404
