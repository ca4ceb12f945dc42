from __future__ import annotations

import logging

import httpx
import pytest

from runtime.events import TextDelta, ToolResult
from tests.conftest import FakeServer
from tests.servers import metric


def test_metrics_count_requests_tokens_and_tool_runs(fake_server: FakeServer) -> None:
    client = fake_server.openai()
    fake_server.engine.enqueue("one two three", [ToolResult("c1", "python", "{}", "2"), TextDelta("x")])
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    httpx.get(f"{fake_server.base_url}/v1/models")  # 401
    text = httpx.get(f"{fake_server.base_url}/metrics").text
    assert metric(text, 'toolstudio_requests_total{dialect="chat",status="200"}') == 2
    assert metric(text, 'toolstudio_requests_total{dialect="other",status="401"}') == 1
    assert metric(text, "toolstudio_generated_tokens_total") == 5
    assert metric(text, 'toolstudio_tool_runs_total{outcome="ok",tool="python"}') == 1
    assert metric(text, "toolstudio_time_to_first_token_seconds_count") == 2
    for gauge in ("toolstudio_queue_depth", "toolstudio_active_sequences", "toolstudio_live_sessions"):
        assert metric(text, gauge) == 0


def test_every_response_has_a_request_id(fake_server: FakeServer) -> None:
    ok = httpx.get(f"{fake_server.base_url}/health")
    assert ok.headers["x-request-id"].startswith("req_")
    denied = httpx.get(f"{fake_server.base_url}/v1/models")
    assert denied.status_code == 401 and denied.headers["x-request-id"].startswith("req_")
    echoed = httpx.get(f"{fake_server.base_url}/health", headers={"x-request-id": "trace-123"})
    assert echoed.headers["x-request-id"] == "trace-123"
    junk = httpx.get(f"{fake_server.base_url}/health", headers={"x-request-id": "bad id\twith spaces"})
    assert junk.headers["x-request-id"].startswith("req_")


def test_cors_is_off_by_default(fake_server: FakeServer) -> None:
    preflight = httpx.options(
        f"{fake_server.base_url}/v1/chat/completions",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers


def test_keys_never_reach_the_logs(fake_server: FakeServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake_server.engine.enqueue("fine")
    fake_server.openai().chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    httpx.get(f"{fake_server.base_url}/v1/models", headers={"Authorization": "Bearer sk-unsloth-" + "f" * 32})
    assert fake_server.key not in caplog.text
    assert "f" * 32 not in caplog.text
