"""MCP server definitions (plugins/mcp/config.py) and the `--mcp-config` file (runtime/plugins.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from plugins.mcp.config import HttpServer, McpConfigError, StdioServer, parse_server
from runtime.plugins import PluginError, read_mcp_config


def test_a_stdio_server_with_toolstudio_options() -> None:
    spec = parse_server(
        "files",
        {
            "command": "/opt/venv/bin/server",
            "args": ["--root", "/data"],
            "env": {"LEVEL": "debug"},
            "shared": True,
            "read_only_paths": ["/srv/models"],
            "network": True,
            "timeout": 12,
        },
    )
    assert spec == StdioServer(
        "files",
        "/opt/venv/bin/server",
        ("--root", "/data"),
        {"LEVEL": "debug"},
        shared=True,
        read_only_paths=(Path("/srv/models"),),
        network=True,
        timeout=12.0,
    )
    assert (spec.kind, spec.startup_timeout) == ("stdio", 30.0)


def test_defaults_are_per_session_no_network_and_the_tool_timeout() -> None:
    spec = parse_server("s", {"command": "server"})
    assert isinstance(spec, StdioServer)
    assert (spec.shared, spec.network, spec.timeout, spec.args, spec.read_only_paths) == (False, False, None, (), ())


def test_an_http_server_with_headers_from_the_environment() -> None:
    environ = {"TOKEN": "s3cret"}
    spec = parse_server(
        "remote",
        {"url": "https://example.org/mcp", "headers": {"Authorization": "Bearer ${TOKEN}", "X-Org": "${ORG:-acme}"}},
        environ,
    )
    assert spec == HttpServer("remote", "https://example.org/mcp", {"Authorization": "Bearer s3cret", "X-Org": "acme"})
    typed = parse_server("remote", {"type": "streamable-http", "url": "http://127.0.0.1:9/mcp"}, environ)
    assert isinstance(typed, HttpServer)


def test_a_missing_variable_without_default_is_an_error_naming_it() -> None:
    with pytest.raises(McpConfigError, match="GITHUB_TOKEN"):
        parse_server("gh", {"command": "server", "env": {"TOKEN": "${GITHUB_TOKEN}"}}, {})


def test_a_disabled_server_is_left_out() -> None:
    assert parse_server("off", {"command": "server", "disabled": True}) is None


@pytest.mark.parametrize(
    ("name", "raw", "complaint"),
    [
        ("a__b", {"command": "x"}, "name"),
        ("", {"command": "x"}, "name"),
        ("x" * 33, {"command": "x"}, "name"),
        ("both", {"command": "x", "url": "http://h/mcp"}, "exactly one"),
        ("neither", {"args": []}, "exactly one"),
        ("sse", {"type": "sse", "url": "http://h/sse"}, "SSE"),
        ("kind", {"type": "websocket", "url": "ws://h"}, "unknown type"),
        ("args", {"command": "x", "args": "--flag"}, "'args'"),
        ("env", {"command": "x", "env": {"A": 1}}, "'env'"),
        ("shared", {"command": "x", "shared": "yes"}, "'shared'"),
        # A string "true" once meant enabled: the operator thought it off, and it ran.
        ("disabled", {"command": "x", "disabled": "true"}, "'disabled'"),
        ("timeout", {"command": "x", "timeout": 0}, "'timeout'"),
        ("timeout2", {"command": "x", "timeout": True}, "'timeout'"),
        ("url", {"url": "ftp://h/mcp"}, "http"),
        ("command", {"command": " "}, "'command'"),
    ],
)
def test_malformed_definitions_are_refused_with_the_reason(name: str, raw: dict[str, object], complaint: str) -> None:
    with pytest.raises(McpConfigError, match=complaint):
        parse_server(name, raw)


def test_options_of_other_clients_are_ignored_and_unknown_ones_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        parse_server("s", {"command": "x", "autoApprove": ["a"], "alwaysAllow": []})
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        parse_server("s", {"command": "x", "netwrok": True})
    assert "netwrok" in caplog.text


def test_the_config_file_shapes(tmp_path: Path) -> None:
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps({"mcpServers": {"a": {"command": "x"}}}))
    assert read_mcp_config(path) == {"a": {"command": "x"}}
    path.write_text(json.dumps({"servers": {"b": {"url": "http://h/mcp"}}}))  # VS Code's mcp.json
    assert read_mcp_config(path) == {"b": {"url": "http://h/mcp"}}


@pytest.mark.parametrize(
    ("text", "complaint"),
    [("{not json", "not valid JSON"), ("[]", "mcpServers"), ('{"mcpServers": {"a": []}}', "'a'")],
)
def test_a_broken_config_file_is_a_plugin_error(tmp_path: Path, text: str, complaint: str) -> None:
    path = tmp_path / "mcp.json"
    path.write_text(text)
    with pytest.raises(PluginError, match=complaint):
        read_mcp_config(path)
    with pytest.raises(PluginError, match="cannot read"):
        read_mcp_config(tmp_path / "missing.json")
