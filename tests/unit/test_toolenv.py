"""The tool environment (runtime/toolenv.py): the pinned scientific stack reaches the python tool
and `python3` in bash through the real sandbox; setup is idempotent; `tools install` keeps what
it adds; an environment the sandbox cannot use is reported, never half-used."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from plugins.bash_tool import BashTool
from plugins.python_tool import PythonTool
from runtime import toolenv
from runtime.sandbox import SandboxConfig, SandboxRunner, bwrap_available
from runtime.sessions import Session
from runtime.tools import ToolContext
from tests.servers import cli, free_port, one_line_error

needs_bwrap = pytest.mark.skipif(
    not bwrap_available(), reason="bubblewrap is not installed (apt-get install bubblewrap)"
)
NEEDS_SETUP = "no tool environment: `make test` builds it (`toolstudio tools setup`)"


@pytest.fixture(scope="module")
def runner() -> SandboxRunner:
    """The default runner, as the server builds it: it finds the tool environment `make test` built."""
    built = SandboxRunner(SandboxConfig())
    assert built.tool_env is not None, f"{NEEDS_SETUP}: {built.tool_env_problem}"
    return built


@pytest.fixture
async def session(tmp_path: Path, runner: SandboxRunner) -> AsyncIterator[Session]:
    session = Session(key_id="key", session_id="data", workspace=tmp_path / "data")
    session.state["sandbox"] = runner
    yield session
    await session.close()


def context(session: Session) -> ToolContext:
    return ToolContext(session=session, deadline=time.monotonic() + 120)


@pytest.mark.sandbox
@needs_bwrap
async def test_pandas_describe_through_the_python_tool(session: Session, runner: SandboxRunner) -> None:
    code = 'import sys, pandas as pd\nprint(sys.prefix)\npd.DataFrame({"a": [1, 2, 3]}).describe()'
    out = await PythonTool().run({"code": code}, context(session))
    assert not out.is_error, out.text
    lines = out.text.splitlines()
    assert lines[0] == str(runner.tool_env)  # the kernel runs on the tool environment
    table = {line.split()[0]: line.split()[1] for line in lines[1:] if len(line.split()) == 2}
    assert (table["count"], table["mean"], table["max"]) == ("3.0", "2.0", "3.0")


@pytest.mark.sandbox
@needs_bwrap
async def test_the_pinned_stack_imports_in_the_kernel(session: Session) -> None:
    code = "import numpy, pandas, matplotlib, scipy, sympy, PIL\nprint(sympy.factor('x**2 - 1'))"
    out = await PythonTool().run({"code": code}, context(session))
    assert (out.text, out.is_error) == ("(x - 1)*(x + 1)", False)


@pytest.mark.sandbox
@needs_bwrap
async def test_python3_in_bash_is_the_tool_environment_read_only(session: Session, runner: SandboxRunner) -> None:
    command = (
        'python3 -c "import pandas, sys; print(sys.prefix)" && '
        f"touch {runner.tool_env}/bin/planted 2>/dev/null || echo read-only"
    )
    out = await BashTool().run({"command": command}, context(session))
    assert out.text.splitlines()[:2] == [str(runner.tool_env), "read-only"], out.text
    assert not (runner.tool_env / "bin" / "planted").exists()


def test_a_missing_environment_is_reported_and_left_out(tmp_path: Path) -> None:
    runner = SandboxRunner(SandboxConfig(tool_env=tmp_path / "nowhere", isolate_sessions=False))
    assert runner.tool_env is None and runner.tool_python is None
    assert "toolstudio tools setup" in (runner.tool_env_problem or "")
    argv = runner.argv(["true"], tmp_path / "ws") if runner.sandboxed and bwrap_available() else []
    assert str(tmp_path / "nowhere") not in " ".join(argv)


def _fake_env(root: Path) -> Path:
    """The files `problem()` looks at (an interpreter, ipykernel's directory), nothing more."""
    env = root / "env"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").symlink_to("/usr/bin/python3")
    (env / "lib" / "python3.11" / "site-packages" / "ipykernel").mkdir(parents=True)
    return env


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs sandboxes as another uid")
def test_an_environment_the_sandbox_user_cannot_reach_is_not_used(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    env = _fake_env(private)
    assert toolenv.problem(env) is None
    runner = SandboxRunner(SandboxConfig(tool_env=env, isolate_sessions=False, session_disk_bytes=None))
    assert runner.tool_env is None
    assert "cannot reach" in (runner.tool_env_problem or "")


def test_readiness_line_names_each_tool_and_why_not(tmp_path: Path) -> None:
    runner = SandboxRunner(SandboxConfig(bwrap="/nonexistent/bwrap", tool_env=tmp_path / "none"))
    ready = toolenv.readiness(runner, ["bash", "python", "web_search"], "ddgs")
    assert ready.ready == ["web_search (ddgs)"]
    assert [line.split(":")[0] for line in ready.not_ready] == ["bash", "python"]
    assert "bubblewrap" in ready.line() and ready.line().startswith("tools ready: web_search (ddgs); NOT ready: ")


@pytest.mark.sandbox
@needs_bwrap
def test_readiness_line_with_the_tool_environment(runner: SandboxRunner) -> None:
    line = toolenv.readiness(runner, ["python", "bash"]).line()
    assert line.startswith(f"tools ready: python (tool env {runner.tool_env}: numpy ")
    assert "pandas " in line and line.endswith("bash (python3 from the tool env)")


def _tiny_wheel(directory: Path, name: str = "toolstudio_tiny", version: str = "1.0") -> Path:
    """A valid pure-Python wheel, so installing needs no registry."""
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": "ANSWER = 42\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
            digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
            record.append(f"{path},sha256={digest},{len(text.encode())}")
        archive.writestr(f"{info}/RECORD", "\n".join([*record, f"{info}/RECORD,,"]) + "\n")
    return wheel


@pytest.fixture
def small_env() -> Iterator[Path]:
    """A directory for a throwaway tool environment (outside the 0700 pytest tree)."""
    root = Path(tempfile.mkdtemp(prefix="toolstudio-toolenv-"))
    yield root / "env"
    shutil.rmtree(root, ignore_errors=True)


def test_setup_is_idempotent_and_install_is_kept(small_env: Path, tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# nothing pinned: this test installs a local wheel only\n")
    assert toolenv.setup(small_env, requirements=requirements) is True
    assert os.path.realpath(toolenv.python_of(small_env)).startswith("/usr/")  # visible inside the sandbox
    assert small_env.stat().st_mode & 0o755 == 0o755
    assert toolenv.setup(small_env, requirements=requirements) is False  # nothing changed: nothing done
    assert "lacks ipykernel" in (toolenv.problem(small_env) or "")

    wheel = _tiny_wheel(tmp_path)
    toolenv.install(small_env, [str(wheel)])
    assert toolenv.installed_versions(small_env, ["toolstudio-tiny"]) == {"toolstudio-tiny": "1.0"}
    assert (small_env / toolenv.EXTRAS_FILE).read_text() == f"{wheel}\n"
    # The recorded package is part of what setup installs now: a rebuild keeps it.
    shutil.rmtree(small_env / "lib")
    assert toolenv.setup(small_env, requirements=requirements) is True
    assert toolenv.installed_versions(small_env, ["toolstudio-tiny"]) == {"toolstudio-tiny": "1.0"}


def test_setup_refuses_a_base_interpreter_the_sandbox_cannot_see(small_env: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "python3"  # e.g. a pyenv or conda interpreter under a home directory
    shutil.copy(os.path.realpath("/usr/bin/python3"), elsewhere)
    with pytest.raises(toolenv.ToolEnvError, match="outside /usr"):
        toolenv.setup(small_env, base=str(elsewhere))
    assert not small_env.exists()


def test_run_with_a_tool_env_that_is_not_one_is_a_one_line_error(tmp_path: Path) -> None:
    done = cli("run", "--tool-env", str(tmp_path / "missing"), "-p", str(free_port()), home=tmp_path)
    assert "--tool-env" in one_line_error(done, logs=True)


def test_tools_status_says_where_and_what(tmp_path: Path) -> None:
    missing = cli("tools", "status", "--tool-env", str(tmp_path / "none"), home=tmp_path)
    assert missing.returncode == 1 and "toolstudio tools setup" in missing.stdout
