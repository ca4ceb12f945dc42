"""The command line that runs a stdio MCP server inside the session's sandbox.

The sandbox (runtime/sandbox.py) sees /usr, /etc, the tool environment and the workspace. A
server usually lives elsewhere: a virtualenv (`uv tool install`, `pipx`, a project's .venv),
whose base interpreter may be under /root/.pyenv or ~/.local/share/uv. So the program is
followed — its virtualenv (found by `pyvenv.cfg`), that venv's base Python, a script's `#!`
interpreter — and each path is bound read-only at the same path inside, with the script files
named in `args` and the operator's `read_only_paths`.

As root, bwrap runs as the session's unprivileged uid and resolves bind sources with its
permissions: a path under a directory that uid cannot traverse (e.g. /root) is first bind-
mounted by root, in a private mount namespace, onto a hop point under the sandbox state
directory, and bwrap binds the hop point (the same trick `SandboxRunner.argv` uses for
workspaces).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from plugins.mcp.config import StdioServer
from runtime.sandbox import SandboxRunner, reachable_by

# Already bound read-only in every sandbox (/bin, /lib, /sbin and /lib64 are links into /usr).
_SYSTEM = tuple(Path(p) for p in ("/usr", "/etc", "/bin", "/lib", "/lib64", "/sbin", "/proc", "/dev"))
_HOP_SCRIPT = 'while [ "$1" != -- ]; do mount --bind -- "$1" "$2" || exit 126; shift 2; done; shift; exec "$@"'
_LAUNCH_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # for setpriv, prlimit, unshare and bwrap; bwrap clears it


class McpStartError(RuntimeError):
    """A server could not be started; the message says why, for the model and the log."""


@dataclass(frozen=True, slots=True)
class Launch:
    argv: list[str]
    env: dict[str, str]  # the launcher's environment (inside the sandbox, bwrap sets its own)
    cwd: Path


def stdio_launch(spec: StdioServer, runner: SandboxRunner, workspace: Path) -> Launch:
    """How to start `spec` in `workspace`. Raises `McpStartError` (the program or a path is
    missing) or `SandboxUnavailable`."""
    program = find_program(spec.command, spec.env)
    inner = [str(program), *spec.args]
    limits = runner.config.kernel_limits  # long-lived like the kernel: no CPU-seconds limit
    if not runner.sandboxed:
        argv = runner.argv(inner, workspace, limits=limits)
        return Launch(argv, runner.unsafe_env(workspace, spec.env), workspace)
    runner.ensure_available()
    runner.prepare_workspace(workspace)
    paths = bind_paths(program, spec.args, spec.read_only_paths, skip=[runner.tool_env] if runner.tool_env else [])
    prefix, binds = _hops(runner, workspace, paths)
    argv = runner.argv(inner, workspace, ro_binds=binds, env=spec.env, limits=limits, share_net=spec.network)
    return Launch([*prefix, *argv], {"PATH": _LAUNCH_PATH}, workspace)


def find_program(command: str, env: Mapping[str, str]) -> Path:
    """The absolute path of `command` (a path, or a name looked up on the server's PATH)."""
    if "/" in command:
        path = Path(command).absolute()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise McpStartError(f"the command {command} does not exist or is not executable")
        return path
    found = shutil.which(command, path=env.get("PATH") or os.environ.get("PATH"))
    if found is None:
        raise McpStartError(f"the command {command!r} was not found on PATH")
    return Path(found).absolute()


def bind_paths(program: Path, args: Iterable[str], extra: Iterable[Path], *, skip: Iterable[Path] = ()) -> list[Path]:
    """Host paths to bind read-only for `program args...`, outermost first, none inside
    another or in what every sandbox has. Raises `McpStartError` for a missing extra path."""
    found: list[Path] = []
    _follow(program, found, depth=0)
    found += [Path(arg) for arg in args if arg.startswith("/") and Path(arg).is_file()]
    for path in extra:
        if not path.exists():
            raise McpStartError(f"read_only_paths: {path} does not exist")
        found.append(path)
    covered = [*_SYSTEM, *skip]
    result: list[Path] = []
    for path in sorted(set(found), key=lambda p: len(p.parts)):
        if not any(path.is_relative_to(outer) for outer in [*covered, *result]):
            result.append(path)
    return result


def _follow(path: Path, found: list[Path], depth: int) -> None:
    """Add what running `path` needs: its virtualenv and base Python, or the file itself (and
    its target, for a link); then the same for a script's interpreter."""
    for candidate in dict.fromkeys([path, path.resolve()]):
        venv = candidate.parent.parent
        if (venv / "pyvenv.cfg").is_file():
            found.append(venv)
            if (base := _venv_base(venv)) is not None:
                found.append(base)
        else:
            found.append(candidate)
    interpreter = _shebang(path.resolve())
    if interpreter is not None and depth < 3:
        _follow(interpreter, found, depth + 1)


def _venv_base(venv: Path) -> Path | None:
    """The prefix of the Python a virtualenv was made from (`home = <prefix>/bin`)."""
    try:
        lines = (venv / "pyvenv.cfg").read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() == "home" and value.strip():
            return Path(value.strip()).resolve().parent
    return None


def _shebang(path: Path) -> Path | None:
    """The interpreter a `#!` script names (through `/usr/bin/env NAME`), if any."""
    try:
        with path.open("rb") as file:
            head = file.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n", 1)[0].decode(errors="replace").split()
    if not words:
        return None
    if Path(words[0]).name == "env":  # `#!/usr/bin/env [-S] python3`
        names = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
        found = shutil.which(names[0]) if names else None
        return Path(found) if found else None
    return Path(words[0])


def _hops(runner: SandboxRunner, workspace: Path, paths: list[Path]) -> tuple[list[str], list[tuple[Path, str]]]:
    """(a prefix that mounts unreachable paths onto hop points, the read-only binds for bwrap)."""
    if os.geteuid() != 0:  # bwrap runs as us: it reaches what we reach
        return [], [(path, str(path)) for path in paths]
    uid, gid = runner.uid_for(workspace)
    binds: list[tuple[Path, str]] = []
    pairs: list[str] = []
    for index, path in enumerate(paths):
        if reachable_by(path if path.is_dir() else path.parent, uid, gid):
            binds.append((path, str(path)))
            continue
        if not _mount_namespaces_allowed():
            raise McpStartError(
                f"the sandbox user (uid {uid}) cannot reach {path}, and `unshare --mount` is not permitted "
                "here: install the MCP server on a path every user can traverse (e.g. under /opt)"
            )
        hop = _hop_point(runner, index, path.is_dir())
        pairs += [str(path), str(hop)]
        binds.append((hop, str(path)))
    if not pairs:
        return [], binds
    return ["unshare", "--mount", "--", "/bin/sh", "-c", _HOP_SCRIPT, "sh", *pairs, "--"], binds


def _hop_point(runner: SandboxRunner, index: int, directory: bool) -> Path:
    """An empty directory or file to mount on; every launch has its own mount namespace, so
    the same points serve every server and session."""
    base = runner.config.state_dir / "mcp-hop"
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)
    point = base / f"{'d' if directory else 'f'}{index}"
    if directory:
        point.mkdir(exist_ok=True)
    else:
        point.touch(exist_ok=True)
    return point


@functools.cache
def _mount_namespaces_allowed() -> bool:
    try:
        done = subprocess.run(["unshare", "--mount", "--", "true"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0
