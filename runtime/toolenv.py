"""The tool environment: the virtualenv the sandboxed `python` tool and `python3` in bash run on.

It is built from the system interpreter (`/usr/bin/python3`, which the sandbox sees at the same
path because /usr is bound read-only) with the pinned list in
plugins/python_tool/requirements.txt, and is itself bound read-only into every sandbox at its
own path, its `bin/` first on PATH. It is not the server's virtualenv: nothing of the server
(its packages, the keys database, the data directory) is visible inside the sandbox.

Where it lives (`default_tool_env`): `$TOOLSTUDIO_TOOL_ENV`, else `/opt/toolstudio/tool-env` as
root (a path every sandbox uid can traverse), else `<data dir>/tool-env`. `toolstudio run
--tool-env PATH` points the server at another one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.config import default_data_dir

if TYPE_CHECKING:
    from runtime.sandbox import SandboxRunner

log = logging.getLogger(__name__)

ENV_VAR = "TOOLSTUDIO_TOOL_ENV"
ROOT_DEFAULT = Path("/opt/toolstudio/tool-env")
BASE_INTERPRETER = "/usr/bin/python3"
REQUIREMENTS = Path(__file__).resolve().parents[1] / "plugins" / "python_tool" / "requirements.txt"
EXTRAS_FILE = "toolstudio-extra.txt"  # packages added with `toolstudio tools install`, kept on rebuilds
STAMP_FILE = "toolstudio-setup.sha256"  # what the last successful setup installed
# Shown in the start-up log line and by `toolstudio tools status`.
HEADLINE_PACKAGES = ("numpy", "pandas", "matplotlib", "scipy", "sympy", "pillow")


class ToolEnvError(RuntimeError):
    """Setting up or changing the tool environment failed; the message says why and what to do."""


def default_tool_env(data_dir: Path | None = None) -> Path:
    """Where the tool environment lives unless `--tool-env` says otherwise: `$TOOLSTUDIO_TOOL_ENV`,
    else /opt/toolstudio/tool-env as root, else `<data_dir>/tool-env` (default ~/.toolstudio)."""
    if configured := os.environ.get(ENV_VAR):
        return Path(configured).expanduser()
    return ROOT_DEFAULT if os.geteuid() == 0 else (data_dir or default_data_dir()) / "tool-env"


def python_of(env: Path) -> Path:
    return env / "bin" / "python"


def site_packages(env: Path) -> list[Path]:
    return sorted(env.glob("lib/python3*/site-packages"))


def problem(env: Path) -> str | None:
    """Why `env` cannot run the python tool's kernel (None: it can). Only looks at files: fast."""
    if not python_of(env).exists():  # exists() follows the symlink to the base interpreter
        if env.exists():
            return f"{env} is not a Python environment (no working bin/python)"
        return f"no tool environment at {env} (run `toolstudio tools setup`)"
    if not any((sp / "ipykernel").is_dir() for sp in site_packages(env)):
        return f"the tool environment {env} lacks ipykernel (run `toolstudio tools setup`)"
    return None


def installed_versions(env: Path, names: Sequence[str] = HEADLINE_PACKAGES) -> dict[str, str]:
    """{distribution name: version} for `names` installed in `env` (from the .dist-info names)."""
    wanted = {_normalize(n): n for n in names}
    found: dict[str, str] = {}
    for sp in site_packages(env):
        for info in sp.glob("*.dist-info"):
            dist, _, version = info.name[: -len(".dist-info")].partition("-")
            if (name := wanted.get(_normalize(dist))) is not None:
                found[name] = version
    return {n: found[n] for n in names if n in found}


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def describe(env: Path) -> str:
    """`/opt/toolstudio/tool-env: numpy 2.4.6, pandas 3.1.1, ...` for logs."""
    versions = installed_versions(env)
    listed = ", ".join(f"{name} {version}" for name, version in versions.items())
    return f"{env}: {listed}" if listed else str(env)


def _wanted(env: Path, requirements: Path) -> tuple[list[str], str]:
    """pip arguments for the pinned list plus recorded extras, and a digest of what they ask for."""
    args = ["-r", str(requirements)]
    digest = hashlib.sha256(requirements.read_bytes())
    extras = env / EXTRAS_FILE
    if extras.is_file():
        args += ["-r", str(extras)]
        digest.update(extras.read_bytes())
    digest.update(os.path.realpath(python_of(env)).encode())
    return args, digest.hexdigest()


def _run(cmd: Sequence[str], what: str) -> None:
    log.info("%s: %s", what, " ".join(cmd))
    done = subprocess.run(list(cmd), check=False)  # output goes to the terminal: pip's progress is the point
    if done.returncode != 0:
        raise ToolEnvError(f"{what} failed (exit {done.returncode}): {' '.join(cmd)}")


def _pip(env: Path, *args: str) -> list[str]:
    return [str(python_of(env)), "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off", *args]


def _check_base(python: str) -> None:
    resolved = Path(python).resolve()
    if not resolved.is_file():
        raise ToolEnvError(f"the base interpreter {python} does not exist")
    if not resolved.is_relative_to("/usr"):
        raise ToolEnvError(
            f"the base interpreter {python} lives at {resolved}, outside /usr: the sandbox would not see it "
            "(use a system Python such as /usr/bin/python3)"
        )
    done = subprocess.run([python, "-c", "import ensurepip, venv"], capture_output=True, check=False)
    if done.returncode != 0:
        raise ToolEnvError(
            f"{python} cannot make virtualenvs (no ensurepip): install python3-venv (`apt-get install python3-venv`)"
        )


def setup(
    env: Path,
    *,
    requirements: Path = REQUIREMENTS,
    base: str = BASE_INTERPRETER,
    upgrade: bool = False,
) -> bool:
    """Build or update the tool environment at `env`; True if anything was installed.

    Idempotent and quick when nothing changed (a stamp, written only after pip succeeded, records
    the digest of the requirements, the recorded extras and the base interpreter; `upgrade`
    reinstalls regardless). A virtualenv whose interpreter no longer runs (the system Python was
    upgraded) is rebuilt. Raises ToolEnvError.
    """
    previous = os.umask(0o022)  # every sandbox uid must read it
    try:
        healthy = python_of(env).exists() and _runs(python_of(env), "import pip")
        if healthy and not upgrade:
            _, digest = _wanted(env, requirements)
            stamp = env / STAMP_FILE
            if stamp.is_file() and stamp.read_text().strip() == digest:
                return False
        if not healthy:
            _check_base(base)
            extras = env / EXTRAS_FILE
            kept = extras.read_bytes() if extras.is_file() else None  # --clear empties the directory
            env.parent.mkdir(parents=True, exist_ok=True)
            _run([base, "-m", "venv", "--clear", str(env)], "creating the tool environment")
            if kept is not None:
                extras.write_bytes(kept)
        args, digest = _wanted(env, requirements)
        _run(_pip(env, *(["--upgrade"] if upgrade else []), *args), "installing the tool packages")
        env.chmod(0o755)
        (env / STAMP_FILE).write_text(digest + "\n")
        return True
    finally:
        os.umask(previous)


def install(env: Path, packages: Sequence[str]) -> None:
    """pip-install `packages` into the tool environment and record them, so a later `setup`
    (or a rebuild) keeps them. Raises ToolEnvError (no environment yet, or pip failed)."""
    if not python_of(env).exists():
        raise ToolEnvError(f"no tool environment at {env}: run `toolstudio tools setup` first")
    previous = os.umask(0o022)
    try:
        _run(_pip(env, *packages), f"installing {' '.join(packages)}")
        extras = env / EXTRAS_FILE
        recorded = extras.read_text().splitlines() if extras.is_file() else []
        extras.write_text("".join(f"{line}\n" for line in [*recorded, *(p for p in packages if p not in recorded)]))
    finally:
        os.umask(previous)


def _runs(python: Path, code: str) -> bool:
    try:
        return subprocess.run([str(python), "-c", code], capture_output=True, timeout=30, check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@dataclass(frozen=True, slots=True)
class Readiness:
    """Which server tools can run here, and why the others cannot (for the start-up log)."""

    ready: list[str]  # e.g. ["python (tool env /opt/toolstudio/tool-env: numpy 2.4.6, ...)", "bash"]
    not_ready: list[str]  # e.g. ["python: no tool environment at ... (run `toolstudio tools setup`)"]

    def line(self) -> str:
        text = "tools ready: " + (", ".join(self.ready) or "none")
        if self.not_ready:
            text += "; NOT ready: " + "; ".join(self.not_ready)
        return text


def system_has_ipykernel(python: str = BASE_INTERPRETER) -> bool:
    if shutil.which(python) is None:
        return False
    probe = [python, "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('ipykernel') is None)"]
    try:
        return subprocess.run(probe, capture_output=True, timeout=30, check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def readiness(runner: SandboxRunner, tool_names: Sequence[str], search_provider: str | None = None) -> Readiness:
    """Which of `tool_names` can run with `runner`, and why any cannot. Probes bwrap (once per
    runner) and, only without a tool environment, whether system Python has ipykernel."""
    from runtime.sandbox import SandboxUnavailable  # runtime.sandbox imports this module

    sandbox_problem = None
    try:
        runner.ensure_available()
    except SandboxUnavailable as exc:
        sandbox_problem = str(exc)
    ready: list[str] = []
    not_ready: list[str] = []
    for name in tool_names:
        if name in ("python", "bash") and sandbox_problem:
            not_ready.append(f"{name}: {sandbox_problem}")
        elif name == "python":
            override = os.environ.get("TOOLSTUDIO_KERNEL_PYTHON")
            if override:
                ready.append(f"python (TOOLSTUDIO_KERNEL_PYTHON={override})")
            elif runner.tool_env is not None:
                ready.append(f"python (tool env {describe(runner.tool_env)})")
            elif system_has_ipykernel():
                ready.append(f"python (system {BASE_INTERPRETER}, no pandas: {runner.tool_env_problem})")
            else:
                not_ready.append(f"python: {runner.tool_env_problem}, and {BASE_INTERPRETER} lacks ipykernel")
        elif name == "bash":
            ready.append("bash (python3 from the tool env)" if runner.tool_env is not None else "bash")
        elif name == "web_search" and search_provider:
            ready.append(f"web_search ({search_provider})")
        else:
            ready.append(name)
    return Readiness(ready, not_ready)
