"""MCP server definitions: one `mcpServers` entry of `--mcp-config` (or of a plugin's
`register_mcp_servers`) checked and turned into a `StdioServer` or an `HttpServer`.

The format is the one Claude Desktop, Cursor and llama-server read, plus toolstudio's own
per-server options (docs/mcp.md):

    {"command": "...", "args": [...], "env": {...},                       stdio
     "shared": false, "read_only_paths": [...], "network": false, "timeout": 60, "startup_timeout": 30}
    {"url": "https://.../mcp", "headers": {...}, "shared": false, "timeout": 60, "startup_timeout": 30}

`${VAR}` and `${VAR:-default}` in `command`, `args`, `env`, `url` and `headers` are replaced from
the server's environment (as Claude Code does), so secrets need not sit in the file.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Server names become tool-name prefixes (`SERVER__TOOL`, at most 64 characters in all); a
# double underscore inside one would make the prefix ambiguous.
SERVER_NAME = re.compile(r"^(?!.*__)[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
DEFAULT_STARTUP_TIMEOUT = 30.0  # seconds to start, initialize and list tools
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_COMMON = {"type", "transport", "shared", "timeout", "startup_timeout", "disabled", "description"}
_STDIO = _COMMON | {"command", "args", "env", "read_only_paths", "network"}
_HTTP = _COMMON | {"url", "headers"}
# Keys other clients write that mean nothing here (auto-approval lists, UI hints): ignored quietly.
_FOREIGN = {"alwaysAllow", "autoApprove", "timeoutMs", "cwd", "envFile", "icon", "name"}


class McpConfigError(ValueError):
    """A definition is malformed; the message names the server and the option."""


@dataclass(frozen=True, slots=True)
class StdioServer:
    """A local server run as a process speaking MCP over stdin/stdout, inside the sandbox."""

    name: str
    command: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    shared: bool = False  # one instance for every session (else one per session)
    read_only_paths: tuple[Path, ...] = ()  # bound read-only at the same path inside the sandbox
    network: bool = False  # keep the host's network (the sandbox has none by default)
    timeout: float | None = None  # seconds per call (None: --tool-timeout)
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT

    @property
    def kind(self) -> str:
        return "stdio"


@dataclass(frozen=True, slots=True)
class HttpServer:
    """A remote server spoken to over streamable HTTP, from the host, with the given headers."""

    name: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    shared: bool = False  # one MCP session for every toolstudio session (else one per session)
    timeout: float | None = None
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT

    @property
    def kind(self) -> str:
        return "http"


McpServerSpec = StdioServer | HttpServer


def parse_server(name: str, raw: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> McpServerSpec | None:
    """The server `raw` defines, or None when it says `"disabled": true`.

    `environ` is where `${VAR}` comes from (default `os.environ`). Raises `McpConfigError`.
    """
    environ = os.environ if environ is None else environ
    where = f"MCP server {name!r}"
    if not SERVER_NAME.match(name):
        raise McpConfigError(
            f"{where}: the name must be 1-32 letters, digits, '-' or '_' (no '__'): it prefixes its tools as NAME__TOOL"
        )
    if _bool(raw, "disabled", where):
        log.info("%s is disabled in its definition: left out", where)
        return None
    kind = str(raw.get("type") or raw.get("transport") or ("http" if "url" in raw else "stdio")).lower()
    if kind in ("sse",):
        raise McpConfigError(f"{where}: the SSE transport is not supported; use the server's streamable HTTP URL")
    if kind not in ("stdio", "http", "streamable-http", "streamable_http", "streamablehttp"):
        raise McpConfigError(f"{where}: unknown type {raw.get('type') or raw.get('transport')!r} (stdio or http)")
    is_http = kind != "stdio"
    if is_http == ("command" in raw) or is_http != ("url" in raw):
        raise McpConfigError(f'{where}: give exactly one of "command" (a stdio server) and "url" (an HTTP server)')
    unknown = set(raw) - (_HTTP if is_http else _STDIO) - _FOREIGN
    if unknown:
        log.warning("%s: ignoring unknown option(s) %s (see docs/mcp.md)", where, ", ".join(sorted(unknown)))
    shared = _bool(raw, "shared", where)
    timeout = _seconds(raw, "timeout", where)
    startup = _seconds(raw, "startup_timeout", where) or DEFAULT_STARTUP_TIMEOUT

    def expand(text: str, option: str) -> str:
        return _expand(text, environ, f"{where}, {option}")

    if is_http:
        url = expand(_string(raw, "url", where), "url")
        if not url.startswith(("http://", "https://")):
            raise McpConfigError(f"{where}: url must be http:// or https://, got {url!r}")
        headers = {k: expand(v, f"headers.{k}") for k, v in _string_map(raw, "headers", where).items()}
        return HttpServer(name, url, headers, shared, timeout, startup)
    command = expand(_string(raw, "command", where), "command")
    args = tuple(expand(arg, "args") for arg in _string_list(raw, "args", where))
    env = {k: expand(v, f"env.{k}") for k, v in _string_map(raw, "env", where).items()}
    paths = tuple(Path(expand(p, "read_only_paths")).absolute() for p in _string_list(raw, "read_only_paths", where))
    network = _bool(raw, "network", where)
    return StdioServer(name, command, args, env, shared, paths, network, timeout, startup)


def _expand(text: str, environ: Mapping[str, str], where: str) -> str:
    def value(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        raise McpConfigError(f"{where}: ${{{name}}} is not set in the environment (write ${{{name}:-default}})")

    return _VARIABLE.sub(value, text)


def _string(raw: Mapping[str, Any], key: str, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value.strip():
        raise McpConfigError(f"{where}: {key!r} must be a non-empty string")
    return value


def _string_list(raw: Mapping[str, Any], key: str, where: str) -> list[str]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise McpConfigError(f"{where}: {key!r} must be a list of strings")
    return value


def _string_map(raw: Mapping[str, Any], key: str, where: str) -> dict[str, str]:
    value = raw.get(key, {})
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise McpConfigError(f"{where}: {key!r} must be an object of strings")
    return value


def _bool(raw: Mapping[str, Any], key: str, where: str) -> bool:
    value = raw.get(key, False)
    if not isinstance(value, bool):
        raise McpConfigError(f"{where}: {key!r} must be true or false")
    return value


def _seconds(raw: Mapping[str, Any], key: str, where: str) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 3600:
        raise McpConfigError(f"{where}: {key!r} must be a number of seconds in (0, 3600]")
    return float(value)
