"""Server-side tools through the real server: persistent kernels per (key, session_id), a
workspace shared by bash and python, and the seed documentation's examples, unchanged."""

from __future__ import annotations

import shutil
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.servers import CliServer, session_tool, toolstudio

pytestmark = [
    pytest.mark.integration,
    pytest.mark.sandbox,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
]


def run_tool(server: CliServer, key: str, session: str, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return session_tool(server.base_url, key, session, tool, arguments, timeout=120)


@pytest.fixture(scope="module")
def other_key(real_server: CliServer) -> str:
    return toolstudio("keys", "create", "--name", "other-tenant", data_dir=real_server.data_dir).strip()


def test_python_state_persists_within_a_session(real_server: CliServer, real_key: str) -> None:
    assert not run_tool(real_server, real_key, "persist", "python", {"code": "x = 41"})["is_error"]
    result = run_tool(real_server, real_key, "persist", "python", {"code": "x + 1"})
    assert "42" in result["output"]


def test_another_key_cannot_reach_the_session(real_server: CliServer, real_key: str, other_key: str) -> None:
    run_tool(real_server, real_key, "private", "python", {"code": "secret = 'mine'"})
    theirs = run_tool(real_server, other_key, "private", "python", {"code": "print(secret)"})
    assert "NameError" in theirs["output"]
    listed = httpx.get(f"{real_server.base_url}/v1/sessions", headers={"x-api-key": other_key}).json()
    assert "persist" not in [s["id"] for s in listed["data"]]


def test_bash_and_python_share_the_workspace(real_server: CliServer, real_key: str) -> None:
    run_tool(real_server, real_key, "shared", "bash", {"command": "echo hello-from-bash > note.txt"})
    result = run_tool(real_server, real_key, "shared", "python", {"code": "print(open('note.txt').read())"})
    assert "hello-from-bash" in result["output"]


def test_sandbox_blocks_network_and_host_writes_and_server_keeps_serving(
    real_server: CliServer, real_key: str, oai: openai.OpenAI
) -> None:
    port = real_server.port
    net = run_tool(
        real_server, real_key, "box", "bash", {"command": f"curl -sS -m 3 http://127.0.0.1:{port}/health; echo rc=$?"}
    )
    assert "rc=0" not in net["output"]
    write = run_tool(real_server, real_key, "box", "bash", {"command": "touch /usr/evil; touch /etc/evil; echo done"})
    assert "Read-only file system" in write["output"] or "Permission denied" in write["output"]
    loop = run_tool(real_server, real_key, "box", "bash", {"command": "while :; do :; done", "timeout": 2})
    assert "timed out" in loop["output"].lower()
    bomb = run_tool(real_server, real_key, "box", "bash", {"command": ":(){ :|:& };:", "timeout": 5})
    assert bomb["tool"] == "bash"
    # The server still answers after all of that.
    assert oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert httpx.get(f"{real_server.base_url}/health").json()["status"] == "ok"


def test_unknown_server_tool_is_a_400(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        oai.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"enable_tools": True, "enabled_tools": ["python", "teleport"], "session_id": "s"},
        )
    assert "teleport" in str(caught.value)


def test_seed_openai_server_tools_example_runs_unchanged(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "What is 123 * 456? Use Python to calculate it."}],
        stream=True,
        max_tokens=200,
        extra_body={"enable_tools": True, "enabled_tools": ["python", "web_search"], "session_id": "my-session"},
    )
    text, finish = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    assert finish in ("stop", "length")  # never "tool_calls": the server ran its own tools
    assert text.strip() or finish == "length"


def test_seed_anthropic_server_tools_example_runs_unchanged(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model="default",
        max_tokens=200,
        messages=[{"role": "user", "content": "Search for Python 3.13 features and summarize them."}],
        extra_body={"enable_tools": True, "enabled_tools": ["web_search", "python"], "session_id": "my-session"},
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert text == "".join(b.text for b in final.content if b.type == "text")
