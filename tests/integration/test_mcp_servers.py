"""MCP servers as server-side tools, through the real server (`toolstudio run --mcp-config`),
the real sandbox and the official SDKs.

Mounted: tests/mcp_servers/counter.py (a stdio server written with the `mcp` SDK) once per
session, once shared, and once with the network allowed; the published `mcp-server-time` from
PyPI (the `test` extra installs it); tests/mcp_servers/http_echo.py over streamable HTTP,
started here on a free port, with a header whose value comes from the environment; and a
server whose command does not exist, which must be left out without failing the boot.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from PIL import Image

from tests.servers import CliServer, cli, free_port, one_line_error, session_tool, toolstudio

pytestmark = [
    pytest.mark.integration,
    pytest.mark.sandbox,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
]

SERVERS = Path(__file__).resolve().parent.parent / "mcp_servers"
PYTHON = str(Path(sys.executable).absolute())  # the project's venv: it has the `mcp` SDK and pillow
TIME_SERVER = Path(sys.executable).absolute().parent / "mcp-server-time"
TOKEN = "token-from-the-environment"
CALL_TIMEOUT = 5  # the counter's per-call timeout (its `hang` tool never answers)


def counter(**options: Any) -> dict[str, Any]:
    return {"command": PYTHON, "args": [str(SERVERS / "counter.py")], "timeout": CALL_TIMEOUT, **options}


@pytest.fixture(scope="module")
def http_mcp() -> Iterator[int]:
    """tests/mcp_servers/http_echo.py on a free port (on the host, as a remote server would be)."""
    port = free_port()
    proc = subprocess.Popen([PYTHON, str(SERVERS / "http_echo.py"), str(port)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert proc.poll() is None, "the HTTP MCP server exited"
        time.sleep(0.1)
    yield port
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, http_mcp: int) -> Iterator[CliServer]:
    home = tmp_path_factory.mktemp("mcp-home")
    servers: dict[str, Any] = {
        "counter": counter(),
        "shared": counter(shared=True),
        "online": counter(network=True),
        "web": {"url": f"http://127.0.0.1:{http_mcp}/mcp", "headers": {"X-Test-Token": "${MCP_TEST_TOKEN}"}},
        "broken": {"command": "/nonexistent/mcp-server"},
    }
    if TIME_SERVER.is_file():
        servers["time"] = {"command": str(TIME_SERVER), "args": ["--local-timezone", "UTC"]}
    config = home / "mcp.json"
    config.write_text(json.dumps({"mcpServers": servers}))
    args = ("--threads", "2", "--parallel", "2", "--temp", "0", "--mcp-config", str(config))
    started = CliServer(home, args=args, env={"MCP_TEST_TOKEN": TOKEN}).start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def key(server: CliServer) -> str:
    return toolstudio("keys", "create", "--name", "mcp-tests", data_dir=server.data_dir).strip()


def call(server: CliServer, key: str, session: str, tool: str, **arguments: Any) -> dict[str, Any]:
    return session_tool(server.base_url, key, session, tool, arguments, timeout=120)


def count_of(result: dict[str, Any]) -> tuple[int, str]:
    """(count, instance id) from the counter's `count=N instance=ID`."""
    assert not result["is_error"], result
    line = next(line for line in result["output"].splitlines() if line.startswith("count="))
    count, instance = line.split()
    return int(count.removeprefix("count=")), instance.removeprefix("instance=")


# -- start-up: discovery, listing, a server that fails -------------------------------------------


def test_tools_are_listed_and_a_broken_server_is_left_out(server: CliServer, key: str) -> None:
    listed = httpx.get(f"{server.base_url}/v1/tools", headers={"Authorization": f"Bearer {key}"}).json()
    names = {tool["name"]: tool for tool in listed["data"]}
    assert {"counter__increment", "counter__image", "shared__increment", "web__echo", "python", "bash"} <= set(names)
    assert names["counter__increment"]["parameters"]["type"] == "object"
    assert names["counter__increment"]["default"] is False  # enabled only when a request names it
    assert not [name for name in names if name.startswith("broken__")]
    log = server.log()
    assert "MCP server 'broken'" in log and "left out" in log
    assert "MCP server 'counter' (stdio, one per session): 10 tool(s)" in log


def test_a_bad_config_stops_the_boot_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"bad": {"command": "x", "args": "not-a-list"}}}))
    done = cli("run", "-p", str(free_port()), "--mcp-config", str(config), home=tmp_path)
    line = one_line_error(done, logs=True)
    assert "bad" in line and "args" in line


def test_an_unknown_server_in_enabled_tools_is_a_400(server: CliServer, key: str) -> None:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"enable_tools": True, "enabled_tools": ["counterr"], "session_id": "s"},
        )
    assert "counterr" in str(caught.value) and "counter" in str(caught.value)


# -- instances: per session, shared ----------------------------------------------------------------


def test_each_session_counts_on_its_own_instance(server: CliServer, key: str) -> None:
    assert count_of(call(server, key, "count-a", "counter__increment"))[0] == 1
    assert count_of(call(server, key, "count-a", "counter__increment", by=2))[0] == 3
    count_b, instance_b = count_of(call(server, key, "count-b", "counter__increment"))
    count_a, instance_a = count_of(call(server, key, "count-a", "counter__increment"))
    assert (count_a, count_b) == (4, 1)
    assert instance_a != instance_b


def test_a_shared_server_counts_for_every_session(server: CliServer, key: str) -> None:
    first, instance_1 = count_of(call(server, key, "shared-a", "shared__increment"))
    second, instance_2 = count_of(call(server, key, "shared-b", "shared__increment"))
    assert second == first + 1 and instance_1 == instance_2


def test_deleting_the_session_stops_its_instance(server: CliServer, key: str) -> None:
    _, before = count_of(call(server, key, "short-lived", "counter__increment"))
    deleted = httpx.delete(f"{server.base_url}/v1/sessions/short-lived", headers={"x-api-key": key})
    assert deleted.status_code == 200
    count, after = count_of(call(server, key, "short-lived", "counter__increment"))
    assert count == 1 and after != before


# -- results -----------------------------------------------------------------------------------------


def test_an_image_becomes_an_attachment(server: CliServer, key: str) -> None:
    result = call(server, key, "results", "counter__image", colour="blue")
    assert not result["is_error"]
    [attachment] = result["attachments"]
    assert (attachment["type"], attachment["media_type"]) == ("image", "image/png")
    with Image.open(io.BytesIO(base64.b64decode(attachment["data"]))) as picture:
        assert picture.convert("RGB").getpixel((4, 4)) == (0, 0, 255)


def test_structured_content_and_is_error(server: CliServer, key: str) -> None:
    measured = call(server, key, "results", "counter__measure")
    assert not measured["is_error"]
    assert json.loads(measured["output"]) == {"value": 21.5, "unit": "celsius"}  # once, not twice
    failed = call(server, key, "results", "counter__fail", message="the reason it failed")
    assert failed["is_error"] is True and "the reason it failed" in failed["output"]


# -- failures: a crash, a call that never answers ----------------------------------------------------


def test_a_crash_mid_call_is_an_error_the_model_can_read_and_the_next_call_restarts(
    server: CliServer, key: str
) -> None:
    call(server, key, "crashy", "counter__increment", by=5)
    started = time.monotonic()
    crashed = call(server, key, "crashy", "counter__crash")
    assert time.monotonic() - started < CALL_TIMEOUT  # seen as a crash, not waited out
    assert crashed["is_error"] is True
    assert "exited with code 3" in crashed["output"] and "crashing on purpose" in crashed["output"]
    after = call(server, key, "crashy", "counter__increment")
    assert count_of(after)[0] == 1  # a fresh instance
    assert "restarted" in after["output"]


def test_a_call_that_never_answers_times_out_and_the_next_call_restarts(server: CliServer, key: str) -> None:
    call(server, key, "hangs", "counter__increment")
    started = time.monotonic()
    hung = call(server, key, "hangs", "counter__hang")
    assert CALL_TIMEOUT - 0.5 < time.monotonic() - started < CALL_TIMEOUT + 10
    assert hung["is_error"] is True and f"did not answer within {CALL_TIMEOUT} s" in hung["output"]
    assert count_of(call(server, key, "hangs", "counter__increment"))[0] == 1


# -- the sandbox -----------------------------------------------------------------------------------


def test_a_stdio_server_writes_only_its_workspace_and_has_no_network(server: CliServer, key: str) -> None:
    where = call(server, key, "boxed", "counter__whereami")["output"]
    assert "cwd=/workspace" in where and "uid=0" not in where
    for path in ("/etc/mcp-evil", str(SERVERS / "evil.py"), PYTHON + "-evil"):
        result = call(server, key, "boxed", "counter__write_file", path=path, text="x")["output"]
        # Under /tmp (a checkout there) the write may land in the sandbox's own /tmp: allowed,
        # as long as the host's file is untouched.
        assert result.startswith("error: ") or path.startswith("/tmp/"), (path, result)
        assert not Path(path).exists()
    host_tmp = Path("/tmp") / f"mcp-escape-{os.getpid()}"
    assert call(server, key, "boxed", "counter__write_file", path=str(host_tmp), text="x")["output"].startswith("wrote")
    assert not host_tmp.exists()  # the sandbox's /tmp is its own
    # The workspace is the session's: the bash tool sees what the MCP server wrote.
    assert (
        "wrote /workspace/from-mcp.txt"
        in call(server, key, "boxed", "counter__write_file", path="from-mcp.txt", text="hello")["output"]
    )
    assert "hello" in call(server, key, "boxed", "bash", command="cat from-mcp.txt")["output"]
    # No network: not even the toolstudio server on the host's loopback.
    refused = call(server, key, "boxed", "counter__connect", host="127.0.0.1", port=server.port)["output"]
    assert refused.startswith("error: ")
    # `"network": true` lifts that ban for one server.
    assert call(server, key, "boxed", "online__connect", host="127.0.0.1", port=server.port)["output"] == "connected"


# -- the published server and the HTTP one -----------------------------------------------------------


def test_the_published_time_server(server: CliServer, key: str) -> None:
    if not TIME_SERVER.is_file():
        pytest.skip("mcp-server-time is not installed (pip install -e '.[test]')")
    result = call(server, key, "time", "time__get_current_time", timezone="Europe/Paris")
    assert not result["is_error"], result
    assert json.loads(result["output"])["timezone"] == "Europe/Paris"
    wrong = call(server, key, "time", "time__get_current_time", timezone="Mars/Olympus")
    assert wrong["is_error"] is True


def test_an_http_server_gets_the_configured_headers_and_a_session_each(server: CliServer, key: str) -> None:
    assert call(server, key, "web-a", "web__echo", text="round trip")["output"] == "round trip"
    assert call(server, key, "web-a", "web__header", name="x-test-token")["output"] == TOKEN
    assert call(server, key, "web-a", "web__increment")["output"] == "count=1"
    assert call(server, key, "web-a", "web__increment")["output"] == "count=2"
    assert call(server, key, "web-b", "web__increment")["output"] == "count=1"


# -- forced calls through the SDKs: the tool_result frame ---------------------------------------------


def test_chat_completions_forced_call_streams_the_tool_result(server: CliServer, key: str) -> None:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0, timeout=120)
    stream = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Count one more."}],
        tool_choice={"type": "function", "function": {"name": "counter__increment"}},
        max_tokens=32,
        stream=True,
        extra_body={
            "enable_tools": True,
            "enabled_tools": ["counter__increment"],
            "session_id": "forced-chat",
            "max_tool_calls_per_message": 1,
        },
    )
    chunks = list(stream)
    frames = [c.model_extra["tool_result"] for c in chunks if (c.model_extra or {}).get("tool_result")]
    assert [frame["name"] for frame in frames] == ["counter__increment"]
    assert frames[0]["is_error"] is False and "count=" in frames[0]["output"]
    assert all(c.choices[0].finish_reason != "tool_calls" for c in chunks if c.choices)


def test_anthropic_forced_call_on_the_published_server(server: CliServer, key: str) -> None:
    if not TIME_SERVER.is_file():
        pytest.skip("mcp-server-time is not installed")
    client = anthropic.Anthropic(base_url=server.base_url, api_key=key, max_retries=0, timeout=120)
    with client.messages.stream(
        model="default",
        max_tokens=32,
        messages=[{"role": "user", "content": "What time is it in UTC?"}],
        tool_choice={"type": "tool", "name": "time__get_current_time"},
        extra_body={
            "enable_tools": True,
            "enabled_tools": ["time__get_current_time"],
            "session_id": "forced-anthropic",
            "max_tool_calls_per_message": 1,
        },
    ) as stream:
        frames = [event for event in stream if event.type == "tool_result"]
        final = stream.get_final_message()
    assert [frame.name for frame in frames] == ["time__get_current_time"]  # type: ignore[attr-defined]
    # The 135M model picks the timezone: a real one gives the time, a made-up one the server's error.
    assert frames[0].output  # type: ignore[attr-defined]
    assert final.stop_reason != "tool_use"


def test_responses_required_call_on_the_http_server_enabled_by_its_name(server: CliServer, key: str) -> None:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0, timeout=120)
    events = list(
        client.responses.create(
            model="default",
            input="Echo something.",
            tool_choice="required",  # one of the tools `enabled_tools: ["web"]` enables
            max_output_tokens=32,
            stream=True,
            extra_body={
                "enable_tools": True,
                "enabled_tools": ["web"],
                "session_id": "forced-responses",
                "max_tool_calls_per_message": 1,
            },
        )
    )
    [frame] = [event for event in events if event.type == "tool_result"]
    assert frame.name in ("web__echo", "web__header", "web__increment")  # type: ignore[attr-defined]
    assert frame.is_error is False  # type: ignore[attr-defined]
    if frame.name == "web__echo":  # type: ignore[attr-defined]
        assert frame.output == json.loads(frame.arguments)["text"]  # type: ignore[attr-defined]


# -- cost of a warm call ---------------------------------------------------------------------------


def test_a_warm_mcp_call_costs_about_what_a_builtin_does(server: CliServer, key: str) -> None:
    """Medians of 15 direct calls each (printed with -s); the MCP call must not restart or
    reconnect per call, which would cost seconds."""

    def median_ms(tool: str, arguments: dict[str, Any]) -> float:
        session_tool(server.base_url, key, "warm", tool, arguments, timeout=120)  # start it
        times = []
        for _ in range(15):
            started = time.perf_counter()
            session_tool(server.base_url, key, "warm", tool, arguments, timeout=120)
            times.append((time.perf_counter() - started) * 1000)
        return statistics.median(times)

    mcp = median_ms("counter__increment", {})
    python = median_ms("python", {"code": "1"})
    bash = median_ms("bash", {"command": "true"})
    print(f"\nwarm call medians: MCP stdio {mcp:.1f} ms, python {python:.1f} ms, bash {bash:.1f} ms")
    assert mcp < 250
