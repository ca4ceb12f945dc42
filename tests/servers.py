"""Starting real servers for tests: the CLI in a subprocess, or an app in a thread."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from litestar import Litestar


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(base_url: str, timeout: float = 120.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{base_url} did not become healthy")


def toolstudio(*args: str, data_dir: Path) -> str:
    """Run the CLI and return its stdout."""
    env = {**os.environ, "TOOLSTUDIO_HOME": str(data_dir)}
    done = subprocess.run(
        [sys.executable, "-m", "runtime.cli", *args], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout


@dataclass
class CliServer:
    """`toolstudio run` as a user starts it, on a free port. Benchmarks start it through their
    own wrapper around the CLI (`launcher`, which takes the CLI's argv), with more time to load
    and, across restarts in one home, one log (`append_log`)."""

    data_dir: Path
    args: tuple[str, ...] = ()
    env: dict[str, str] | None = None  # on top of the test process's environment
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    launcher: tuple[str, ...] = (sys.executable, "-m", "runtime.cli")
    health_timeout: float = 120.0  # seconds to load the model and answer /health
    append_log: bool = False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> CliServer:
        self.port = free_port()
        env = {**os.environ, "TOOLSTUDIO_HOME": str(self.data_dir), **(self.env or {})}
        with (self.data_dir / "server.log").open("ab" if self.append_log else "wb") as log:
            self.proc = subprocess.Popen(
                [*self.launcher, "run", "-p", str(self.port), *self.args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_healthy(self.base_url, timeout=self.health_timeout, proc=self.proc)
        return self

    def log(self) -> str:
        return (self.data_dir / "server.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class ThreadedServer:
    """An app (e.g. one built around a FakeEngine) served by uvicorn in a thread."""

    def __init__(self, app: Litestar) -> None:
        self.app = app
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None, access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        wait_healthy(self.base_url, timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def session_tool(
    base_url: str, key: str, session: str, name: str, arguments: dict[str, Any], *, timeout: float = 60.0
) -> dict[str, Any]:
    """Run one tool through `POST /v1/sessions/{session}/tools/{name}`; the result body."""
    response = httpx.post(
        f"{base_url}/v1/sessions/{session}/tools/{name}",
        json=arguments,
        headers={"Authorization": f"Bearer {key}"},
        timeout=timeout,
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def alive(pid: int) -> bool:
    """Running, not a zombie (a zombie is gone for every purpose but its exit status)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def descendants(root: int) -> set[int]:
    """Live (non-zombie) descendants of `root`, read from /proc."""
    children: dict[int, set[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = Path(entry, "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), set()).add(int(entry.name))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def cli(*args: str, home: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TOOLSTUDIO_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def one_line_error(done: subprocess.CompletedProcess[str], *, logs: bool = False) -> str:
    """The error line of a failed command. `logs`: `run` also logs to stderr; the error must still
    be the last line, and no traceback anywhere."""
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("toolstudio: error: "), done.stderr
    assert logs or len(lines) == 1, done.stderr
    return lines[-1]


def metric(text: str, name: str) -> float:
    """One sample's value from a Prometheus text exposition."""
    for line in text.splitlines():
        if line.split(" ")[0] == name:
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)
