"""The sandbox command line of a stdio MCP server (plugins/mcp/launch.py): what is bound
read-only, and the mount hop for paths the sandbox uid cannot reach."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from plugins.mcp.config import StdioServer
from plugins.mcp.launch import McpStartError, bind_paths, find_program, stdio_launch
from runtime.sandbox import SandboxConfig, SandboxRunner


def make_venv(root: Path, home: str) -> Path:
    """A directory shaped like a virtualenv: pyvenv.cfg naming `home`, and bin/server, a script
    whose #! line is the venv's python."""
    (root / "bin").mkdir(parents=True)
    (root / "pyvenv.cfg").write_text(f"home = {home}\ninclude-system-site-packages = false\n")
    python = root / "bin" / "python"
    python.symlink_to(sys.executable)
    server = root / "bin" / "server"
    server.write_text(f"#!{python}\nimport server\n")
    server.chmod(0o755)
    return server


def test_a_venv_script_binds_the_venv_and_its_base_python(tmp_path: Path) -> None:
    base = tmp_path / "pythons" / "3.12"
    (base / "bin").mkdir(parents=True)
    server = make_venv(tmp_path / "venv", str(base / "bin"))
    paths = bind_paths(server, [], [])
    assert tmp_path / "venv" in paths and base in paths
    assert not any(p.is_relative_to(tmp_path / "venv") and p != tmp_path / "venv" for p in paths)  # nothing nested


def test_script_arguments_and_extra_paths_are_bound_and_system_paths_are_not(tmp_path: Path) -> None:
    script = tmp_path / "srv" / "server.py"
    script.parent.mkdir()
    script.write_text("print('hi')\n")
    data = tmp_path / "data"
    data.mkdir()
    paths = bind_paths(Path("/usr/bin/env"), [str(script), "--flag", "relative.py", "/etc/hosts"], [data])
    assert paths == sorted([script, data], key=lambda p: len(p.parts))
    with pytest.raises(McpStartError, match="does not exist"):
        bind_paths(Path("/usr/bin/env"), [], [tmp_path / "missing"])


def test_an_env_shebang_follows_the_interpreter_on_path(tmp_path: Path) -> None:
    tool = tmp_path / "tool"
    tool.write_text("#!/usr/bin/env -S sh -e\necho hi\n")
    tool.chmod(0o755)
    assert bind_paths(tool, [], []) == [tool]  # sh is under /usr: nothing more to bind


def test_find_program(tmp_path: Path) -> None:
    assert find_program("sh", {}) == Path(shutil.which("sh") or "")
    with pytest.raises(McpStartError, match="not found"):
        find_program("no-such-mcp-server", {})
    with pytest.raises(McpStartError, match="does not exist"):
        find_program(str(tmp_path / "nope"), {})


def test_unsafe_mode_runs_the_program_directly(tmp_path: Path) -> None:
    runner = SandboxRunner(SandboxConfig(unsafe_no_sandbox=True, session_disk_bytes=None))
    spec = StdioServer("s", "sh", ("-c", "true"), {"A": "1"})
    launch = stdio_launch(spec, runner, tmp_path)
    assert launch.argv[0] == "prlimit" and launch.argv[-3:] == [shutil.which("sh"), "-c", "true"]
    assert launch.env["A"] == "1" and launch.cwd == tmp_path


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")
@pytest.mark.skipif(os.geteuid() != 0, reason="the hop is for root, whose sandboxes run as another uid")
def test_a_path_the_sandbox_uid_cannot_reach_goes_through_a_hop(tmp_path: Path) -> None:
    hidden = tmp_path / "private"
    hidden.mkdir(mode=0o700)
    server = make_venv(hidden / "venv", "/usr/bin")
    runner = SandboxRunner(SandboxConfig(session_disk_bytes=None))
    workspace = tmp_path / "ws"
    try:
        launch = stdio_launch(StdioServer("s", str(server), network=True), runner, workspace)
    finally:
        runner.close_workspace(workspace)
    argv = launch.argv
    assert argv[:3] == ["unshare", "--mount", "--"]  # root mounts it onto a hop point first
    hop = argv[argv.index(str(hidden / "venv")) + 1]
    assert argv[argv.index(hop, argv.index("--ro-bind")) + 1] == str(hidden / "venv")  # bound at its own path
    assert "--share-net" in argv and "--unshare-all" in argv
