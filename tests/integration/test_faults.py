"""Faults an operator will meet, and what users and operators must see when they happen.

- The Python kernel dies mid-call (the code calls `os._exit`, or something outside kills it):
  the call returns a result that says the state was lost, and the session goes on.
- A tool hangs: the call returns a timeout result within the tool timeout, and the session goes on.
- The key database is locked by another process, or read-only: the CLI says so in one line
  (no traceback) and the database is unharmed.
- A corrupt model file: one line, no traceback (missing and truncated files: tests/unit/test_cli.py).
- SIGTERM while streams are running: every client sees its stream end, the process exits within a
  bound, and no kernel or sandbox process outlives it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from runtime.config import ToolsConfig
from runtime.engine.fake import FakeEngine
from runtime.events import ToolCallEnd, ToolCallStart
from runtime.keys import KeyStore
from runtime.sandbox import bwrap_available
from tests.conftest import FakeServer, serve_fake
from tests.servers import CliServer, alive, cli, descendants, free_port, one_line_error, session_tool, toolstudio

with_bwrap = pytest.mark.skipif(
    not bwrap_available(), reason="bubblewrap is not installed (apt-get install bubblewrap)"
)
TOOL_TIMEOUT = 3.0  # seconds: small, so hanging tools are stopped quickly


# -- processes ---------------------------------------------------------------------------------------


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def kernel_pids(server_pid: int) -> set[int]:
    """Host pids of the ipykernel interpreters a server started (not the bwrap/prlimit/setpriv
    wrappers around them). Only its descendants: other test runs may have kernels of their own."""
    found = set()
    for pid in descendants(server_pid):
        argv = cmdline(pid)
        # `python -m ipykernel_launcher`, or the kernel's boot script (`python -c "…ipykernel…"`).
        if argv and any("ipykernel" in arg for arg in argv[1:3]) and "python" in Path(argv[0]).name:
            found.add(pid)
    return found


def wait_until(condition: Any, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())


# -- a server with the real sandboxed tools and a scripted model --------------------------------------


@pytest.fixture
def tool_server(tmp_path: Path) -> Iterator[FakeServer]:
    with serve_fake(tmp_path, FakeEngine(), tools_config=ToolsConfig(tool_timeout=TOOL_TIMEOUT)) as server:
        yield server


def run_tool(server: FakeServer, session: str, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return session_tool(server.base_url, server.key, session, tool, arguments)


def python_call(code: str, call_id: str = "call_1") -> list[Any]:
    arguments = json.dumps({"code": code})
    return [ToolCallStart(0, call_id, "python"), ToolCallEnd(0, call_id, "python", arguments)]


@pytest.mark.sandbox
@with_bwrap
def test_kernel_exiting_mid_call_loses_state_and_the_conversation_goes_on(tool_server: FakeServer) -> None:
    tools = {"enable_tools": True, "enabled_tools": ["python"], "session_id": "crashy"}
    client = tool_server.openai()
    hi = [{"role": "user", "content": "compute"}]
    tool_server.engine.enqueue(python_call("x = 41"), "set")
    client.chat.completions.create(model="m", messages=hi, extra_body=tools)

    tool_server.engine.enqueue(python_call("import os\nos._exit(1)"), "it crashed")
    crashed = client.chat.completions.create(model="m", messages=hi, extra_body=tools)
    assert crashed.choices[0].message.content == "it crashed"
    output = crashed.model_extra["tool_results"][0]["output"]
    assert "restarted" in output and "gone" in output  # the model is told its variables are gone
    # ...and so is the next turn of the model, in the transcript it reads.
    assert "restarted" in tool_server.engine.requests[-1].messages[-1].parts[0].content

    tool_server.engine.enqueue(python_call("print(x)"), "x is gone", python_call("print(6 * 7)", "c2"), "ok")
    after = client.chat.completions.create(model="m", messages=hi, extra_body=tools)
    assert "NameError" in after.model_extra["tool_results"][0]["output"]
    again = client.chat.completions.create(model="m", messages=hi, extra_body=tools)
    assert again.model_extra["tool_results"][0]["output"].startswith("42")


@pytest.mark.sandbox
@with_bwrap
def test_kernel_killed_from_outside_mid_call_and_between_calls(tool_server: FakeServer) -> None:
    me = os.getpid()  # the server runs in a thread of this process, so its kernels are our descendants
    # Kernels of earlier tests' servers in this process may still be shutting down.
    others = kernel_pids(me)
    assert not run_tool(tool_server, "victim", "python", {"code": "x = 5"})["is_error"]
    [kernel] = kernel_pids(me) - others  # this session's kernel, as the host sees it

    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        call = pool.submit(run_tool, tool_server, "victim", "python", {"code": "import time\ntime.sleep(30)"})
        time.sleep(1.0)  # inside the cell by now
        os.kill(kernel, signal.SIGKILL)
        result = call.result(timeout=20)
    assert time.monotonic() - started < 10  # noticed the death, did not sit out the 30 s sleep
    assert "died" in result["output"] and "gone" in result["output"], result
    assert wait_until(lambda: not alive(kernel), 5)

    # A fresh kernel serves the session; the old state is gone.
    assert "NameError" in run_tool(tool_server, "victim", "python", {"code": "x"})["output"]
    [second] = kernel_pids(me) - others
    assert second != kernel
    os.kill(second, signal.SIGKILL)
    time.sleep(0.5)
    between = run_tool(tool_server, "victim", "python", {"code": "print('back')"})
    assert between["output"].startswith("back") and "had died since the last call" in between["output"]


@pytest.mark.sandbox
@with_bwrap
def test_hanging_tools_time_out_and_the_session_goes_on(tool_server: FakeServer) -> None:
    run_tool(tool_server, "slow", "python", {"code": "kept = 'yes'"})
    for tool, arguments, note in [
        ("python", {"code": "while True:\n    pass"}, "timed out"),
        ("python", {"code": "import time\ntime.sleep(3600)"}, "timed out"),
        ("bash", {"command": "sleep 3600"}, "timed out"),
        ("bash", {"command": "sleep 3600 & sleep 3600 & wait"}, "timed out"),  # a process group
    ]:
        started = time.monotonic()
        result = run_tool(tool_server, "slow", tool, arguments)
        elapsed = time.monotonic() - started
        assert note in result["output"], result
        assert elapsed < TOOL_TIMEOUT + 4, f"{tool} {arguments}: {elapsed:.1f} s"
    # The kernel was interrupted, not restarted: its state survived every timeout.
    assert run_tool(tool_server, "slow", "python", {"code": "kept"})["output"] == "'yes'"
    assert "[exit code: 0]" in run_tool(tool_server, "slow", "bash", {"command": "true"})["output"]


# -- the key database ----------------------------------------------------------------------------------


@dataclass
class LockHolder:
    """Another process holding the database's write lock (an open `BEGIN EXCLUSIVE`)."""

    db: Path
    proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> LockHolder:
        script = (
            "import sqlite3, sys, time\n"
            "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "db.execute('BEGIN EXCLUSIVE')\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n"  # hold the lock until told to let go
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script, str(self.db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "locked"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.communicate(timeout=10)


def db_state(db: Path) -> tuple[str, list[tuple[Any, ...]]]:
    # closing(): a connection left open keeps the WAL files around, which changes what a
    # read-only open of the database can do.
    with contextlib.closing(sqlite3.connect(db)) as conn:
        (integrity,) = conn.execute("PRAGMA integrity_check").fetchone()
        rows = conn.execute("SELECT name, digest, revoked FROM api_keys ORDER BY id").fetchall()
    return integrity, rows


def test_keys_create_on_a_locked_database_is_one_line_and_harmless(tmp_path: Path) -> None:
    key = cli("keys", "create", "--name", "first", home=tmp_path).stdout.strip()
    db = tmp_path / "keys.sqlite3"
    before = db_state(db)
    with LockHolder(db):
        started = time.monotonic()
        line = one_line_error(cli("keys", "create", "--name", "second", home=tmp_path))
        assert time.monotonic() - started < 30  # gives up after SQLite's busy timeout, not never
        assert "locked" in line
        # Reading still works beside a writer (WAL): the operator can look while it is locked.
        listing = cli("keys", "list", home=tmp_path)
        assert listing.returncode == 0 and "first" in listing.stdout
    assert db_state(db) == before == ("ok", before[1])
    assert cli("keys", "create", "--name", "second", home=tmp_path).returncode == 0
    assert KeyStore(db).verify(key) is not None


def test_first_run_on_a_locked_database_is_one_line(tmp_path: Path) -> None:
    db = tmp_path / "keys.sqlite3"
    KeyStore(db).close()  # an empty key database: `run` will want to create the first key
    with LockHolder(db):
        line = one_line_error(cli("run", "-p", str(free_port()), home=tmp_path, timeout=90), logs=True)
    assert "locked" in line
    assert db_state(db) == ("ok", [])


def test_a_running_server_keeps_serving_while_another_process_holds_the_lock(
    tmp_path: Path, fake_engine: FakeEngine
) -> None:
    with serve_fake(tmp_path, fake_engine) as server:
        _, fresh = server.keys.create("fresh")  # never used: its first use records `last_used`
        with LockHolder(tmp_path / "keys.sqlite3"):
            started = time.monotonic()
            models = httpx.get(f"{server.base_url}/v1/models", headers={"x-api-key": fresh}, timeout=30)
            # Recording `last_used` may wait for SQLite's busy timeout, but it must not fail the request.
            assert models.status_code == 200 and time.monotonic() - started < 10
            assert httpx.get(f"{server.base_url}/health", timeout=5).status_code == 200


def can_remount() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "--mount", "true"], capture_output=True, check=False).returncode == 0


@pytest.mark.skipif(not can_remount(), reason="needs root and `unshare --mount` for a read-only bind mount")
@pytest.mark.parametrize("command", [("keys", "create"), ("keys", "list"), ("run", "-p", "{port}")])
def test_read_only_data_dir_is_one_line_and_harmless(tmp_path: Path, command: tuple[str, ...]) -> None:
    home = tmp_path / "home"
    cli("keys", "create", "--name", "first", home=home)
    before = db_state(home / "keys.sqlite3")
    argv = [a.replace("{port}", str(free_port())) for a in command]
    # A private mount namespace: the data dir is read-only for this command alone, as on a
    # read-only volume. (File modes would not do: root ignores them.)
    script = 'mount --bind -o ro "$1" "$1" && shift && exec "$@"'
    done = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script, "sh", str(home), sys.executable, "-m", "runtime.cli", *argv],
        env={**os.environ, "TOOLSTUDIO_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,  # `run` must refuse at once: a server whose data dir is read-only cannot keep sessions
    )
    if command == ("keys", "list") and done.returncode == 0:
        assert "first" in done.stdout  # reading keys from a read-only volume is fine too
    else:
        assert str(home) in one_line_error(done, logs=command[0] == "run")
    assert db_state(home / "keys.sqlite3") == before


# -- the model file ------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["magic-only", "corrupt-metadata"])
def test_corrupt_model_file_is_one_line(tmp_path: Path, damage: str) -> None:
    from runtime.model_source import embedded_model

    model = tmp_path / f"{damage}.gguf"
    if damage == "magic-only":
        model.write_bytes(b"GGUF")  # passes the quick magic check; llama.cpp must refuse it
    else:
        data = bytearray(embedded_model().read_bytes())
        data[24 : 24 + 4096] = bytes((i * 151 + 7) % 256 for i in range(4096))  # the key/value header
        model.write_bytes(bytes(data))
    done = cli("run", "--model", str(model), "-p", str(free_port()), home=tmp_path, timeout=120)
    line = one_line_error(done, logs=True)
    assert "could not load" in line and str(model) in line


# -- SIGTERM with streams running ----------------------------------------------------------------------


@dataclass
class StreamWatch:
    """A streaming request in a thread: when it got its first bytes, and how it ended."""

    path: str
    body: dict[str, Any]
    first_chunk: threading.Event = field(default_factory=threading.Event)
    ended_at: float | None = None
    tail: str = ""
    error: str | None = None

    def run(self, base_url: str, key: str) -> None:
        try:
            with httpx.stream(
                "POST", f"{base_url}{self.path}", json=self.body, headers={"x-api-key": key}, timeout=60
            ) as response:
                for chunk in response.iter_text():
                    self.first_chunk.set()
                    self.tail = (self.tail + chunk)[-400:]
        except httpx.HTTPError as exc:  # a cut connection is an end too, as long as it comes
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.first_chunk.set()
            self.ended_at = time.monotonic()


LONG = "Write a very long story about a lighthouse keeper, with many chapters."
# Orchestrators give a stopping process about 30 s (Kubernetes' default grace) before SIGKILL,
# which would orphan whatever the server could not shut down itself.
EXIT_BOUND = 25.0


@pytest.mark.integration
@pytest.mark.sandbox
@with_bwrap
def test_sigterm_during_streams_ends_them_exits_and_leaves_no_kernels(tmp_path: Path) -> None:
    server = CliServer(tmp_path, args=("--threads", "2", "--parallel", "4", "--tool-timeout", "30")).start()
    assert server.proc is not None
    pool = ThreadPoolExecutor(1)
    try:
        key = toolstudio("keys", "create", "--name", "sigterm", data_dir=tmp_path).strip()
        headers = {"x-api-key": key}
        # A live kernel in a session, and a bash command still running, when the signal comes.
        warm = httpx.post(
            f"{server.base_url}/v1/sessions/s/tools/python", json={"code": "x = 1"}, headers=headers, timeout=60
        )
        assert warm.status_code == 200 and not warm.json()["is_error"], warm.text
        assert kernel_pids(server.proc.pid)
        streams = [
            StreamWatch("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": LONG}]}),
            StreamWatch(
                "/v1/messages", {"model": "m", "max_tokens": 4000, "messages": [{"role": "user", "content": LONG}]}
            ),
            StreamWatch("/v1/responses", {"model": "m", "input": LONG}),
        ]
        for watch in streams:
            # Greedy: SmolLM2 writes this story past 1,500 tokens in every dialect (measured),
            # where a sampled one sometimes ended before the signal and the test had nothing to cut.
            watch.body["stream"], watch.body["temperature"] = True, 0
            threading.Thread(target=watch.run, args=(server.base_url, key), daemon=True).start()
        for watch in streams:
            assert watch.first_chunk.wait(60), watch.path
        sleeper: Future[httpx.Response] = pool.submit(
            httpx.post,
            f"{server.base_url}/v1/sessions/s/tools/bash",
            json={"command": "sleep 600"},
            headers=headers,
            timeout=60,
        )
        time.sleep(1.0)
        family = descendants(server.proc.pid)  # bwrap, kernels, the bash sandbox
        assert family
        assert all(w.ended_at is None for w in streams), "a stream ended before the signal: nothing tested"

        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        try:
            exit_code = server.proc.wait(timeout=EXIT_BOUND + 5)
        except subprocess.TimeoutExpired:
            still = [(w.path, w.ended_at) for w in streams]
            pytest.fail(f"still running {EXIT_BOUND + 5} s after SIGTERM (streams: {still}):\n{server.log()[-1500:]}")
        exited = time.monotonic() - signalled

        assert exited < EXIT_BOUND, f"the server took {exited:.1f} s to exit after SIGTERM"
        # uvicorn re-raises the signal once it has shut down, so -SIGTERM is a clean exit too.
        assert exit_code in (0, -signal.SIGTERM), server.log()[-3000:]
        # Every client sees its stream end (finished, or cut), none hangs on a dead server.
        assert wait_until(lambda: all(w.ended_at is not None for w in streams), 10)
        futures.wait([sleeper], timeout=10)
        assert sleeper.done()
        # The kernel and the sandboxes died with the server, and nothing was orphaned.
        assert wait_until(lambda: not [p for p in family if alive(p)], 10), [cmdline(p) for p in family if alive(p)]
    finally:
        server.stop()
        pool.shutdown(wait=False)
