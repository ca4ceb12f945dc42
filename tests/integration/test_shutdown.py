"""SIGTERM cuts the streams in flight: the real `toolstudio run` with the packaged model, one
stream per dialect through the official SDKs. Each client must see that its answer was cut
(an error, or `response.failed`), never a stream that ends as if the answer were whole.
The dialect details are in tests/unit/test_shutdown_streams.py (FakeEngine)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.servers import CliServer, free_port, toolstudio

LONG = "Write a very long story about a lighthouse keeper, with many chapters."


@dataclass
class Outcome:
    """One SDK stream in a thread: what it saw before it ended, and how it ended."""

    started: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)
    seen: list[str] = field(default_factory=list)  # event types / finish reasons seen
    error: BaseException | None = None

    def run(self, consume: Callable[[Outcome], None]) -> None:
        try:
            consume(self)
        except BaseException as exc:
            self.error = exc
        finally:
            self.started.set()
            self.ended.set()


def chat(client: openai.OpenAI) -> Callable[[Outcome], None]:
    def consume(out: Outcome) -> None:
        stream = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": LONG}], max_tokens=4000, stream=True
        )
        for chunk in stream:
            for choice in chunk.choices:
                if choice.delta.content:
                    out.started.set()
                if choice.finish_reason is not None:
                    out.seen.append(f"finish:{choice.finish_reason}")

    return consume


def responses(client: openai.OpenAI) -> Callable[[Outcome], None]:
    def consume(out: Outcome) -> None:
        with client.responses.stream(model="m", input=LONG, max_output_tokens=4000) as stream:
            for event in stream:
                out.seen.append(event.type)
                if event.type == "response.output_text.delta":
                    out.started.set()

    return consume


def messages(client: anthropic.Anthropic) -> Callable[[Outcome], None]:
    def consume(out: Outcome) -> None:
        with client.messages.stream(model="m", max_tokens=4000, messages=[{"role": "user", "content": LONG}]) as stream:
            for event in stream:
                out.seen.append(event.type)
                if event.type == "content_block_delta":
                    out.started.set()

    return consume


def body_of(error: BaseException | None) -> Any:
    return getattr(error, "body", None)


@pytest.mark.integration
def test_sigterm_mid_stream_ends_every_dialect_as_cut(tmp_path: Path) -> None:
    server = CliServer(tmp_path, args=("--threads", "2", "--parallel", "4", "--temp", "0")).start()
    assert server.proc is not None
    try:
        key = toolstudio("keys", "create", "--name", "shutdown", data_dir=tmp_path).strip()
        oai = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0, timeout=60)
        claude = anthropic.Anthropic(base_url=server.base_url, api_key=key, max_retries=0, timeout=60)
        outcomes = {"chat": Outcome(), "responses": Outcome(), "messages": Outcome()}
        consumers = {"chat": chat(oai), "responses": responses(oai), "messages": messages(claude)}
        for name, outcome in outcomes.items():
            threading.Thread(target=outcome.run, args=(consumers[name],), daemon=True).start()
        for name, outcome in outcomes.items():
            assert outcome.started.wait(60), name
        ended_early = [n for n, o in outcomes.items() if o.ended.is_set()]
        assert not ended_early, f"ended before the signal, nothing tested: {ended_early}"

        server.proc.send_signal(signal.SIGTERM)
        for name, outcome in outcomes.items():
            assert outcome.ended.wait(30), f"{name} still streaming 30 s after SIGTERM"
        try:
            exit_code = server.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running 30 s after SIGTERM:\n{server.log()[-1500:]}")
        assert exit_code in (0, -signal.SIGTERM), server.log()[-3000:]

        # Chat: the SDK raises the in-band error frame; no finish_reason ("stop" or "length").
        cut = outcomes["chat"]
        assert isinstance(cut.error, openai.APIError), cut.error
        assert body_of(cut.error)["code"] == "server_shutting_down", body_of(cut.error)
        assert cut.seen == []
        # Responses: `error`, then `response.failed`; never `response.completed`.
        cut = outcomes["responses"]
        assert cut.error is None, cut.error
        assert cut.seen[-2:] == ["error", "response.failed"], cut.seen[-5:]
        assert "response.completed" not in cut.seen
        # Anthropic: `event: error` (overloaded_error), raised by the SDK; no message_stop.
        cut = outcomes["messages"]
        assert isinstance(cut.error, anthropic.APIStatusError), cut.error
        assert body_of(cut.error)["error"]["type"] == "overloaded_error"
        assert "message_stop" not in cut.seen and "message_delta" not in cut.seen
    finally:
        server.stop()


def test_sigterm_while_the_engine_loads_stops_the_server_at_once(tmp_path: Path) -> None:
    # The start-up measurement of 1..33-row decodes on one thread (speculative decoding) takes
    # many seconds; the model's own load (llama.cpp's progress callback) stops the same way.
    # Before, the server finished loading and measuring before it exited.
    server = CliServer(tmp_path, args=("--threads", "1", "--spec", "ngram", "--draft-max", "32"))
    server.port = free_port()
    env = {**os.environ, "TOOLSTUDIO_HOME": str(tmp_path)}
    with (tmp_path / "server.log").open("wb") as log:
        proc = subprocess.Popen(
            [*server.launcher, "run", "-p", str(server.port), *server.args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while "100%" not in server.log():  # the model is loaded: the measurement runs now
            assert proc.poll() is None and time.monotonic() < deadline, server.log()[-2000:]
            time.sleep(0.05)
        assert httpx.get(f"{server.base_url}/health", timeout=5).json()["status"] == "loading"
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        took = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert took < 10, f"exited {took:.1f} s after SIGTERM"
    assert "speculative decoding with" not in server.log(), "the start-up measurement ran to its end after SIGTERM"
    assert "model loading stopped" in server.log()
