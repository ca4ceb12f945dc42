"""Security properties, checked through the HTTP server, the way an attacker would reach them.

- Two API keys never share a kernel, a workspace or a stored response, whatever ids they send.
- Code run through the bash and python tools cannot reach the network (not even the host's
  loopback), see host processes, write outside its workspace, read the key database or another
  session's files, gain privileges, or exhaust the host (forks, memory, disk); the server keeps
  serving after each attempt. (Runner-level checks of the same sandbox: tests/unit/test_sandbox.py.)
- API keys never reach the server log, even on auth failures and at `--log-level debug`; key
  checks compare digests in constant time.
- CORS is off unless `--cors-origin` names origins; listening beyond loopback logs a warning.
"""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest

import runtime.keys
from runtime.config import ToolsConfig
from runtime.engine.fake import FakeEngine
from runtime.keys import KeyStore
from runtime.sandbox import bwrap_available
from tests.conftest import FakeServer, serve_fake
from tests.servers import CliServer, free_port, session_tool, toolstudio

with_bwrap = pytest.mark.skipif(
    not bwrap_available(), reason="bubblewrap is not installed (apt-get install bubblewrap)"
)
TOOL_TIMEOUT = 5.0


@pytest.fixture
def tool_server(tmp_path: Path) -> Iterator[FakeServer]:
    with serve_fake(tmp_path, FakeEngine(), tools_config=ToolsConfig(tool_timeout=TOOL_TIMEOUT)) as server:
        yield server


def tool(server: FakeServer, session: str, name: str, arguments: dict[str, Any], key: str | None = None) -> str:
    """Run one tool in a session over HTTP; its output."""
    return session_tool(server.base_url, key or server.key, session, name, arguments)["output"]  # type: ignore[no-any-return]


def bash(server: FakeServer, session: str, command: str, key: str | None = None) -> str:
    return tool(server, session, "bash", {"command": command}, key)


def python(server: FakeServer, session: str, code: str, key: str | None = None) -> str:
    return tool(server, session, "python", {"code": code}, key)


def still_serving(server: FakeServer, session: str = "after") -> None:
    """The server answers, and a fresh sandbox still works normally."""
    assert httpx.get(f"{server.base_url}/health", timeout=5).json()["status"] == "ok"
    assert bash(server, session, "echo fine").startswith("fine")


def key_id(server: FakeServer, key: str) -> str:
    record = server.keys.verify(key)
    assert record is not None
    return str(record.id)


# -- isolation between keys ------------------------------------------------------------------------


@pytest.mark.sandbox
@with_bwrap
def test_two_keys_with_the_same_session_id_share_nothing(tool_server: FakeServer) -> None:
    _, other = tool_server.keys.create("other")
    python(tool_server, "shared", "secret = 'alpha'")
    bash(tool_server, "shared", "echo alpha > note.txt")

    # The other key, same session_id: a fresh kernel and an empty workspace.
    assert "NameError" in python(tool_server, "shared", "secret", key=other)
    assert bash(tool_server, "shared", "ls -A /workspace; cat note.txt", key=other).startswith("[stderr]")
    bash(tool_server, "shared", "echo beta > note.txt", key=other)
    assert bash(tool_server, "shared", "cat note.txt").startswith("alpha")

    # Nor can it name the first key's workspace by its host path: that path is not in its sandbox.
    runtime = tool_server.server.app.state.runtime
    theirs = runtime.sessions.workspace_for(key_id(tool_server, tool_server.key), "shared")
    assert (theirs / "note.txt").read_text() == "alpha\n"
    leaked = bash(tool_server, "shared", f"cat {theirs}/note.txt; ls /workspace/..", key=other)
    assert "alpha" not in leaked and "No such file" in leaked
    assert "alpha" not in python(tool_server, "shared", f"open('{theirs}/note.txt').read()", key=other)

    # Listing and deleting only ever touch the caller's own sessions.
    for key in (tool_server.key, other):
        listed = httpx.get(f"{tool_server.base_url}/v1/sessions", headers={"x-api-key": key}).json()["data"]
        assert [s["id"] for s in listed] == ["shared"]
    deleted = httpx.delete(f"{tool_server.base_url}/v1/sessions/shared", headers={"x-api-key": other})
    assert deleted.status_code == 200
    assert python(tool_server, "shared", "secret") == "'alpha'"


def test_stored_responses_are_invisible_to_other_keys(tool_server: FakeServer) -> None:
    _, other = tool_server.keys.create("other")
    tool_server.engine.enqueue("a private answer")
    created = tool_server.openai().responses.create(model="m", input="remember this")
    base = f"{tool_server.base_url}/v1/responses"
    mine, theirs = {"x-api-key": tool_server.key}, {"x-api-key": other}

    missing = httpx.get(f"{base}/resp_0000000000000000deadbeef", headers=theirs)
    for method, url in [("GET", f"{base}/{created.id}"), ("GET", f"{base}/{created.id}/input_items")]:
        answer = httpx.request(method, url, headers=theirs)
        # Exactly like an id that does not exist: another key cannot even learn that it exists.
        assert answer.status_code == 404 and answer.json()["error"]["type"] == missing.json()["error"]["type"]
        assert "private" not in answer.text and "remember" not in answer.text
    assert httpx.delete(f"{base}/{created.id}", headers=theirs).status_code == 404
    chained = httpx.post(base, json={"model": "m", "input": "and?", "previous_response_id": created.id}, headers=theirs)
    assert chained.status_code == 404 and chained.json()["error"]["param"] == "previous_response_id"
    assert all("remember" not in m.text for r in tool_server.engine.requests[1:] for m in r.messages)

    assert httpx.get(f"{base}/{created.id}", headers=mine).json()["output"][0]["content"][0]["text"] == (
        "a private answer"
    )


# -- escapes through the tools ---------------------------------------------------------------------


class Listener:
    """A TCP server on the host's loopback that counts who reaches it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.mark.sandbox
@with_bwrap
def test_no_network_not_even_the_hosts_loopback(tool_server: FakeServer) -> None:
    listener = Listener()
    api_port = tool_server.server.port
    try:
        for port in (listener.port, api_port):
            out = bash(tool_server, "net", f"exec 3<>/dev/tcp/127.0.0.1/{port} && echo CONNECTED")
            assert "CONNECTED" not in out and "refused" in out.lower(), out
            code = (
                "import socket\ntry:\n"
                f"    socket.create_connection(('127.0.0.1', {port}), timeout=2); print('CONNECTED')\n"
                "except OSError as exc:\n    print('blocked', type(exc).__name__)"
            )
            assert python(tool_server, "net", code).startswith("blocked"), port
        interfaces = bash(tool_server, "net", "tail -n +3 /proc/net/dev | cut -d: -f1")
        assert interfaces.split()[0] == "lo" and "eth" not in interfaces
    finally:
        listener.close()
    assert listener.accepted == 0
    still_serving(tool_server)


@pytest.mark.sandbox
@with_bwrap
def test_host_processes_are_invisible(tool_server: FakeServer) -> None:
    me = os.getpid()  # the server runs in this process
    out = bash(tool_server, "proc", f"ls /proc | grep -cE '^[0-9]+$'; cat /proc/{me}/environ; cat /proc/*/cmdline")
    count = int(out.split()[0])
    assert count <= 6, out  # the sandbox's own init, shell and pipeline
    ours = Path(f"/proc/{me}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    assert ours not in out and "No such file" in out  # neither our command line nor our environment
    listing = python(tool_server, "proc", "import os\nsorted(int(p) for p in os.listdir('/proc') if p.isdigit())")
    assert me not in ast.literal_eval(listing)


@pytest.mark.sandbox
@with_bwrap
def test_nothing_outside_the_workspace_is_writable(tool_server: FakeServer, tmp_path: Path) -> None:
    marker = f"escape-{uuid.uuid4().hex}"
    targets = ["/usr", "/etc", "/root", "/var", "/opt", "/", str(tmp_path), str(tmp_path / "sessions")]
    out = bash(tool_server, "w", "; ".join(f"touch {t}/{marker} 2>/dev/null && echo WROTE {t}" for t in targets))
    assert "WROTE" not in out, out
    code = f"for t in {targets!r}:\n    try:\n        open(t + '/{marker}', 'w'); print('WROTE', t)\n    except OSError:\n        pass"
    assert "WROTE" not in python(tool_server, "w", code)
    for target in targets:
        assert not Path(target, marker).exists()
    assert not Path("/tmp", marker).exists()  # the sandbox's /tmp is its own


@pytest.mark.sandbox
@with_bwrap
def test_key_database_and_data_dir_are_out_of_reach(tool_server: FakeServer, tmp_path: Path) -> None:
    db = tmp_path / "keys.sqlite3"
    assert db.exists()
    out = bash(
        tool_server,
        "keys",
        f"cat {db} | head -c 100; ls {tmp_path}; find / -xdev -name 'keys.sqlite3*' -not -path '/proc/*' 2>/dev/null",
    )
    assert "SQLite format" not in out and "keys.sqlite3" not in out.replace(str(db), ""), out
    assert "No such file" in out
    assert "No such file" in python(tool_server, "keys", f"open('{db}', 'rb').read(16)")


@pytest.mark.sandbox
@with_bwrap
def test_symlinks_planted_in_a_workspace_do_not_reach_the_host(tool_server: FakeServer, tmp_path: Path) -> None:
    """Server-side code (listing, deletion, plugin tools) touches workspaces on the host: links
    planted by sandboxed code must not make it read or delete host files."""
    bash(tool_server, "links", f"ln -s / rootlink; ln -s {tmp_path} datalink; ln -s /etc/passwd passwd")
    listed = httpx.get(f"{tool_server.base_url}/v1/sessions", headers={"x-api-key": tool_server.key}).json()
    assert listed["data"][0]["size_bytes"] < 4096  # the links themselves, not what they point at
    counted = tool(tool_server, "links", "word_count", {"path": "passwd"})
    assert "outside the workspace" in counted
    deleted = httpx.delete(f"{tool_server.base_url}/v1/sessions/links", headers={"x-api-key": tool_server.key})
    assert deleted.status_code == 200
    assert (tmp_path / "keys.sqlite3").exists() and Path("/etc/passwd").exists()


@pytest.mark.sandbox
@with_bwrap
def test_no_privilege_escalation(tool_server: FakeServer) -> None:
    probes = {
        "uid": "id -u",
        "su": "su -c id root </dev/null && echo ESCALATED",
        "sudo": "sudo -n id && echo ESCALATED",
        "mount": "mount -t tmpfs none /workspace && echo ESCALATED",
        "userns": "unshare -r id && echo ESCALATED",
        "userns-mount": "unshare -rm sh -c 'mount -t tmpfs none /usr && echo ESCALATED'",
        "caps": "grep -E '^(CapEff|CapPrm|NoNewPrivs)' /proc/self/status",
        "setuid-copy": "cp /usr/bin/id ./id && chmod u+s ./id && ./id -u",
    }
    out = {name: bash(tool_server, "priv", command) for name, command in probes.items()}
    assert out["uid"].split()[0] != "0"
    for name, text in out.items():
        assert "ESCALATED" not in text, (name, text)
    assert "CapEff:\t0000000000000000" in out["caps"] and "CapPrm:\t0000000000000000" in out["caps"]
    assert "NoNewPrivs:\t1" in out["caps"]
    assert out["setuid-copy"].split()[0] != "0"
    code = "import os\ntry:\n    os.setuid(0)\nexcept OSError:\n    print('refused')\nprint(os.getuid())"
    refused, uid = python(tool_server, "priv", code).split()[:2]
    assert refused == "refused" and uid != "0"
    still_serving(tool_server)


@pytest.mark.sandbox
@with_bwrap
def test_fork_bomb_is_stopped_and_the_server_keeps_serving(tool_server: FakeServer) -> None:
    marker = f"bomb-{uuid.uuid4().hex}"
    started = time.monotonic()
    out = bash(tool_server, "bomb", f": {marker}; :(){{ :|:& }};:")
    assert time.monotonic() - started < TOOL_TIMEOUT + 10
    assert "timed out" in out or "exit code" in out
    deadline = time.monotonic() + 10
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not processes_with(marker), "processes of the fork bomb outlived the call"
    still_serving(tool_server)


def size_of(output: str) -> int:
    return int(output.split("size=")[1].split()[0])


def processes_with(marker: str) -> list[int]:
    found = []
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker.encode() in path.read_bytes():
                found.append(int(path.parent.name))
        except OSError:  # gone meanwhile
            continue
    return found


@pytest.mark.sandbox
@with_bwrap
def test_memory_and_disk_exhaustion_fail_inside_the_sandbox(tool_server: FakeServer) -> None:
    python(tool_server, "big", "kept = 'yes'")
    # One allocation past the address-space limit: refused at once, nothing actually filled.
    assert "MemoryError" in python(tool_server, "big", "hog = bytearray(64 * 2**30)")
    assert python(tool_server, "big", "kept") == "'yes'"  # the kernel survived it
    assert "MemoryError" in bash(tool_server, "big", "python3 -c 'bytearray(16 * 2**30)'")

    # A file may not outgrow the per-file limit, and /tmp is a small RAM disk of its own.
    out = bash(tool_server, "big", "head -c 300M /dev/zero > big; echo size=$(stat -c %s big); rm big")
    assert "File size limit exceeded" in out and size_of(out) <= 256 * 2**20, out
    out = bash(
        tool_server,
        "big",
        "for f in a b; do head -c 200M /dev/zero > /tmp/$f; done; echo size=$(cat /tmp/a /tmp/b | wc -c)",
    )
    assert "No space left" in out and size_of(out) <= 256 * 2**20, out
    code = "f = open('big', 'wb')\ntry:\n    f.write(bytes(300 * 2**20))\nexcept OSError as exc:\n    print(exc)"
    assert "File too large" in python(tool_server, "big", code)
    assert python(tool_server, "big", "kept") == "'yes'"
    still_serving(tool_server)


# -- keys: logs, comparison ------------------------------------------------------------------------


def test_key_checks_compare_digests_in_constant_time(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.sqlite3")
    _, key = store.create("k")
    with mock.patch.object(runtime.keys.hmac, "compare_digest", wraps=runtime.keys.hmac.compare_digest) as compare:
        assert store.verify(key) is not None
        assert store.verify(key[:-1] + ("0" if key[-1] != "0" else "1")) is None
    # Digests, never the key itself, are what gets compared (and stored).
    assert compare.call_args_list[0].args == (runtime.keys.digest(key), runtime.keys.digest(key))
    assert all(key not in args for call in compare.call_args_list for args in call.args)
    raw = (tmp_path / "keys.sqlite3").read_bytes()
    assert key.encode() not in raw and key[len("sk-unsloth-") :].encode() not in raw
    store.close()


@pytest.fixture(scope="module")
def debug_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliServer]:
    """The real server at --log-level debug, allowing one browser origin."""
    home = tmp_path_factory.mktemp("debug-home")
    toolstudio("keys", "create", "--name", "first", data_dir=home)  # so `run` prints no key of its own
    server = CliServer(
        home, args=("--threads", "2", "--log-level", "debug", "--cors-origin", "https://app.example")
    ).start()
    yield server
    server.stop()


@pytest.mark.integration
def test_keys_never_reach_the_log_at_debug_level(debug_server: CliServer) -> None:
    home = debug_server.data_dir
    key = toolstudio("keys", "create", "--name", "user", data_dir=home).strip()
    revoked = toolstudio("keys", "create", "--name", "gone", data_dir=home).strip()
    toolstudio("keys", "revoke", "gone", data_dir=home)
    near_miss = key[:-4] + "beef"
    url = debug_server.base_url
    chat = {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=url, timeout=120) as client:
        assert client.post("/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer {key}"}).is_success
        streamed = client.post("/v1/messages", json={**chat, "stream": True}, headers={"x-api-key": key})
        assert streamed.is_success
        assert client.post("/v1/responses", json={"input": "hi", "max_output_tokens": 4}, headers={"x-api-key": key})
        for bad in (
            {"Authorization": f"Bearer {near_miss}"},
            {"x-api-key": revoked},
            {"Authorization": f"Basic {key}"},
            {"Authorization": key},
            {"x-api-key": key.upper()},
        ):
            denied = client.get("/v1/models", headers=bad)
            assert denied.status_code == 401
            assert key not in denied.text and revoked not in denied.text
        assert client.get(f"/v1/models?api_key={key}").status_code == 401
    log = debug_server.log()
    assert "DEBUG" in log  # the level really was debug
    for secret in (key, revoked, near_miss):
        assert secret not in log
        assert secret[len("sk-unsloth-") :] not in log  # nor the secret part alone
        assert secret[-16:] not in log


@pytest.mark.integration
def test_cors_only_for_the_origins_named(debug_server: CliServer, real_server: CliServer) -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    allowed = httpx.options(
        f"{debug_server.base_url}/v1/chat/completions", headers={"Origin": "https://app.example", **preflight}
    )
    assert allowed.headers.get("access-control-allow-origin") == "https://app.example"
    for server, origin in [(debug_server, "https://evil.example"), (real_server, "https://app.example")]:
        refused = httpx.options(f"{server.base_url}/v1/chat/completions", headers={"Origin": origin, **preflight})
        assert "access-control-allow-origin" not in refused.headers
        simple = httpx.get(f"{server.base_url}/health", headers={"Origin": origin})
        assert "access-control-allow-origin" not in simple.headers


@pytest.mark.integration
def test_listening_on_every_interface_logs_a_warning(tmp_path: Path, real_server: CliServer) -> None:
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runtime.cli", "run", "-H", "0.0.0.0", "-p", str(free_port())],
            env={**os.environ, "TOOLSTUDIO_HOME": str(tmp_path)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        # Stopped as soon as the warning is out: the test never leaves a port open to the network.
        deadline = time.monotonic() + 60
        while "reachable from the network" not in log_path.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text(errors="replace")
            time.sleep(0.05)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert "WARNING" in log_path.read_text(errors="replace")
    assert "reachable from the network" not in real_server.log()  # 127.0.0.1: no warning
