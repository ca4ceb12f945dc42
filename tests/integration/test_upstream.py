"""toolstudio on upstreams: `toolstudio run --upstream URL` in front of real OpenAI-compatible
servers the tests start: llama-cpp-python's own server (`python -m llama_cpp.server`) and a
second toolstudio, both on the packaged SmolLM2 model, driven through the official SDKs.

The two upstreams differ in ways a client never sees here, which is the point: one never sends
usage, refuses `json_schema`, ignores `tool_choice: "required"`, repeats a call's name in every
chunk, wants no null contents, cuts a stream short with a bare `[DONE]` when another request
arrives, and answers a non-UUID `x-request-id` with an empty 400; the other reports cached
tokens and counts tokens exactly. See docs/scale-out.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from runtime.model_source import embedded_model
from tests.servers import CliServer, free_port, session_tool, toolstudio, wait_healthy

pytestmark = [pytest.mark.integration]

needs_sandbox = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
LONG = "Write a long story about a dragon named Ember."


@dataclass
class LlamaCppServer:
    """`python -m llama_cpp.server` on the packaged model."""

    log_path: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, port: int | None = None) -> LlamaCppServer:
        self.port = port or free_port()
        args = ["--model", str(embedded_model()), "--port", str(self.port), "--host", "127.0.0.1"]
        # One thread (the machine is small); interrupt_requests off: by default a new request
        # cuts the running stream short, ending it with a bare [DONE].
        args += ["--n_threads", "1", "--n_ctx", "4096", "--interrupt_requests", "False"]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "llama_cpp.server", *args], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text(errors="replace")[-2000:]
            try:
                if httpx.get(f"{self.base_url}/v1/models", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError("llama_cpp.server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


@dataclass
class Front:
    """A toolstudio front-end with `--upstream` flags, and clients for it."""

    server: CliServer
    key: str
    name: str = ""

    def openai(self, **kw: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.server.base_url}/v1", api_key=self.key, max_retries=0, timeout=300, **kw)

    def anthropic(self) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.server.base_url, api_key=self.key, max_retries=0, timeout=300)

    def backend_of(self, request_id: str) -> str:
        """The upstream URL the front-end logged for this request (its last generation)."""
        pattern = re.compile(rf"\[{re.escape(request_id)}\] .*generation on upstream (\S+)")
        found = pattern.findall(self.server.log())
        assert found, f"no upstream logged for {request_id}"
        return str(found[-1])


def start_front(home: Path, upstreams: list[str], key: str | None, *extra: str, key_name: str = "tests") -> Front:
    home.mkdir(parents=True, exist_ok=True)
    flags = [arg for url in upstreams for arg in ("--upstream", url)]
    if key:
        flags += ["--upstream-key", key]
    # No spare kernels: a dozen front-ends start here, and few of them run a tool.
    server = CliServer(home, args=(*flags, "--temp", "0", "--kernel-pool", "0", *extra)).start()
    try:
        return Front(server, toolstudio("keys", "create", "--name", key_name, data_dir=home).strip())
    except BaseException:
        server.stop()
        raise


@pytest.fixture(scope="module")
def llama_cpp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaCppServer]:
    server = LlamaCppServer(tmp_path_factory.mktemp("llama-cpp") / "server.log").start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def toolstudio_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CliServer, str]]:
    home = tmp_path_factory.mktemp("toolstudio-upstream")
    server = CliServer(home, args=("--threads", "1", "--parallel", "4", "--temp", "0", "--kernel-pool", "0")).start()
    yield server, toolstudio("keys", "create", "--name", "front-end", data_dir=home).strip()
    server.stop()


@pytest.fixture(scope="module", params=["llama-cpp-python", "toolstudio"])
def front(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    llama_cpp: LlamaCppServer,
    toolstudio_upstream: tuple[CliServer, str],
) -> Iterator[Front]:
    """A front-end on one upstream of each kind."""
    if request.param == "toolstudio":
        upstream, key = toolstudio_upstream
        front = start_front(tmp_path_factory.mktemp("front-ts"), [f"{upstream.base_url}/v1"], key)
    else:
        front = start_front(tmp_path_factory.mktemp("front-lcp"), [llama_cpp.base_url], None)
    front.name = request.param
    yield front
    front.server.stop()


def tool_session(session: str) -> dict[str, Any]:
    return {"enable_tools": True, "enabled_tools": ["python"], "session_id": session, "max_tool_calls_per_message": 1}


# -- the same features through either upstream ----------------------------------------------------


def test_chat_streamed_and_not_give_the_same_greedy_answer(front: Front) -> None:
    """Greedy, after one warm-up: llama-cpp-python's first answer to a prompt differs from its
    later ones (it reuses the cached prefix, and the numerics change; measured)."""
    client = front.openai()
    messages = [{"role": "user", "content": "Name a colour."}]
    client.chat.completions.create(model="default", messages=messages, max_tokens=12)  # type: ignore[arg-type]
    whole = client.chat.completions.create(model="default", messages=messages, max_tokens=12)  # type: ignore[arg-type]
    chunks = list(
        client.chat.completions.create(
            model="default",
            messages=messages,  # type: ignore[arg-type]
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert whole.choices[0].message.content and streamed == whole.choices[0].message.content
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert whole.usage is not None and whole.usage.prompt_tokens > 0


def test_anthropic_and_responses_stream(front: Front) -> None:
    with front.anthropic().messages.stream(
        model="default", max_tokens=16, messages=[{"role": "user", "content": "Say hello."}]
    ) as stream:
        text = "".join(stream.text_stream)
        message = stream.get_final_message()
    assert text and text == "".join(b.text for b in message.content if b.type == "text")
    assert message.stop_reason in ("end_turn", "max_tokens") and message.usage.input_tokens > 0
    events = list(
        front.openai().responses.create(model="default", input="Say hello.", max_output_tokens=16, stream=True)
    )
    final = events[-1].response  # type: ignore[union-attr]
    assert events[-1].type in ("response.completed", "response.incomplete") and final.output_text


def test_client_tool_call_in_every_dialect(front: Front) -> None:
    chat = front.openai().chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[{"type": "function", "function": WEATHER}],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=80,
    )
    (call,) = chat.choices[0].message.tool_calls or []
    assert chat.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"  # type: ignore[union-attr]
    assert isinstance(json.loads(call.function.arguments)["city"], str)  # type: ignore[union-attr]
    message = front.anthropic().messages.create(
        model="default",
        max_tokens=80,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[{"name": WEATHER["name"], "description": WEATHER["description"], "input_schema": WEATHER["parameters"]}],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "get_weather"},
    )
    assert message.stop_reason == "tool_use"
    (use,) = [b for b in message.content if b.type == "tool_use"]
    assert use.name == "get_weather" and isinstance(use.input["city"], str)  # type: ignore[index]
    response = front.openai().responses.create(
        model="default",
        input="What is the weather in Paris?",
        tools=[{"type": "function", **WEATHER}],  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=80,
    )
    (item,) = [o for o in response.output if o.type == "function_call"]
    assert item.name == "get_weather" and "city" in json.loads(item.arguments)


def test_json_schema_is_enforced_by_the_upstream(front: Front) -> None:
    """llama-cpp-python refuses `json_schema` (500): the engine sends its own form instead."""
    chat = front.openai().chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Alice is 30 years old. Give her name and age."}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}},
        max_tokens=60,
    )
    person = json.loads(chat.choices[0].message.content or "")
    assert set(person) == {"name", "age"} and isinstance(person["age"], int)
    response = front.openai().responses.create(
        model="default",
        input="Alice is 30 years old. Give her name and age.",
        text={"format": {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}},
        max_output_tokens=60,
    )
    assert set(json.loads(response.output_text)) == {"name", "age"}


@needs_sandbox
def test_server_side_python_call_with_its_tool_result_frame(front: Front) -> None:
    """The kernel lives on the front-end: a cell run there directly first makes every later cell
    of the session print 6 * 7 (the 135M model cannot be trusted to write the code), then a forced
    python call from the upstream's model runs in it, in every dialect."""
    session = f"upstream-{front.name}"
    transform = 'get_ipython().input_transformers_post.append(lambda lines: ["print(6 * 7)\\n"])'
    ready = session_tool(front.server.base_url, front.key, session, "python", {"code": transform}, timeout=120)
    assert not ready["is_error"], ready
    chunks = list(
        front.openai().chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "Compute 6 * 7 with Python."}],
            tool_choice={"type": "function", "function": {"name": "python"}},
            max_tokens=120,
            stream=True,
            extra_body=tool_session(session),
        )
    )
    frames = [c.model_extra["tool_result"] for c in chunks if (c.model_extra or {}).get("tool_result")]
    (frame,) = frames
    assert frame["name"] == "python" and not frame["is_error"] and frame["output"].strip() == "42"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes and finishes[-1] != "tool_calls"  # the server ran it: nothing for the client to do
    with front.anthropic().messages.stream(
        model="default",
        max_tokens=120,
        messages=[{"role": "user", "content": "Compute 6 * 7 with Python."}],
        tool_choice={"type": "tool", "name": "python"},
        extra_body=tool_session(session),
    ) as stream:
        (event,) = [e for e in stream if e.type == "tool_result"]
    assert event.output.strip() == "42"  # type: ignore[attr-defined]
    response = front.openai().responses.create(
        model="default",
        input="Compute 6 * 7 with Python.",
        tool_choice={"type": "function", "name": "python"},
        max_output_tokens=120,
        extra_body=tool_session(session),
    )
    (result,) = response.model_extra["tool_results"]  # type: ignore[index]
    assert result["output"].strip() == "42"


def test_a_client_that_hangs_up_stops_the_upstream(front: Front, toolstudio_upstream: tuple[CliServer, str]) -> None:
    """Closing the client's stream closes the upstream's, so no backend decodes for nobody
    (the toolstudio upstream shows it: its /health counts the sequences decoding)."""
    if front.name != "toolstudio":
        pytest.skip("only the toolstudio upstream reports the sequences it decodes")
    upstream, _ = toolstudio_upstream
    body = {"model": "default", "messages": [{"role": "user", "content": LONG}], "max_tokens": 400, "stream": True}
    headers = {"Authorization": f"Bearer {front.key}"}
    with httpx.stream("POST", f"{front.server.base_url}/v1/chat/completions", json=body, headers=headers) as reply:
        lines = reply.iter_lines()  # held: a line iterator dropped mid-way closes the connection
        for line in lines:
            if '"content"' in line:
                break
        assert httpx.get(f"{upstream.base_url}/health").json()["active"] == 1
    deadline = time.monotonic() + 10
    while httpx.get(f"{upstream.base_url}/health").json()["active"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert httpx.get(f"{upstream.base_url}/health").json()["active"] == 0


# -- where the upstreams differ ------------------------------------------------------------------


def test_tool_choice_required_is_forced_or_refused_by_name(front: Front) -> None:
    """llama-cpp-python accepts `required` and answers in text: a 400 naming it, never that."""
    client = front.openai()

    def ask() -> Any:
        return client.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "What is the weather in Paris?"}],
            tools=[{"type": "function", "function": WEATHER}],  # type: ignore[list-item]
            tool_choice="required",
            max_tokens=80,
        )

    if front.name == "llama-cpp-python":
        with pytest.raises(openai.BadRequestError) as refused:
            ask()
        assert refused.value.body["param"] == "tool_choice" and "required" in refused.value.message  # type: ignore[index]
        with pytest.raises(anthropic.BadRequestError) as refused_too:
            front.anthropic().messages.create(
                model="default",
                max_tokens=40,
                messages=[{"role": "user", "content": "Weather in Paris?"}],
                tools=[{"name": "get_weather", "input_schema": WEATHER["parameters"]}],  # type: ignore[list-item]
                tool_choice={"type": "any"},
            )
        assert refused_too.value.body["type"] == "error"  # type: ignore[index]
    else:
        assert ask().choices[0].finish_reason == "tool_calls"


def test_usage_and_cached_tokens(front: Front) -> None:
    """toolstudio reports the prompt and its cached part; llama-cpp-python sends no usage in a
    stream, so the front-end estimates it (and knows nothing cached)."""
    client = front.openai()
    messages = [{"role": "system", "content": "You are terse. " * 20}, {"role": "user", "content": "Hi"}]
    for _ in range(2):
        chunks = list(
            client.chat.completions.create(
                model="default",
                messages=messages,  # type: ignore[arg-type]
                max_tokens=4,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens > 40 and usage.completion_tokens > 0
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
    if front.name == "toolstudio":
        assert cached and cached > 40  # the second identical prompt came from the upstream's cache
    else:
        assert not cached


def test_count_tokens(front: Front, toolstudio_upstream: tuple[CliServer, str]) -> None:
    """Exact on a toolstudio upstream (its own count); an estimate on llama-cpp-python."""
    body = {"model": "default", "messages": [{"role": "user", "content": "How many tokens is this?"}]}
    counted = front.anthropic().messages.count_tokens(**body).input_tokens  # type: ignore[arg-type]
    if front.name == "toolstudio":
        upstream, key = toolstudio_upstream
        direct = anthropic.Anthropic(base_url=upstream.base_url, api_key=key, max_retries=0)
        assert counted == direct.messages.count_tokens(**body).input_tokens  # type: ignore[arg-type]
    else:
        assert 5 < counted < 200


def test_n_choices(front: Front) -> None:
    """Each choice is its own upstream stream (seed + i), whatever the upstream does with `n`
    (llama-cpp-python drops it silently)."""
    chat = front.openai().chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Name an animal."}],
        n=2,
        max_tokens=6,
        temperature=1.0,
        seed=7,
    )
    assert [c.index for c in chat.choices] == [0, 1]
    assert all(c.message.content for c in chat.choices)


# -- balancing and failures ---------------------------------------------------------------------


def test_session_affinity_across_requests_and_front_ends(
    tmp_path_factory: pytest.TempPathFactory, llama_cpp: LlamaCppServer, toolstudio_upstream: tuple[CliServer, str]
) -> None:
    """Every turn of a session reaches the same backend, on either of two front-ends (they rank
    backends by the session alone, sharing nothing); different sessions spread over both."""
    upstream, key = toolstudio_upstream
    urls = [llama_cpp.base_url, upstream.base_url]
    fronts = [start_front(tmp_path_factory.mktemp("front-affinity-0"), urls, key)]
    try:
        # The second front-end shares the first one's keys (a consistent copy of its key
        # database): a session is (API key, session_id), so its key must be the same on both.
        second = tmp_path_factory.mktemp("front-affinity-1")
        with (
            contextlib.closing(sqlite3.connect(fronts[0].server.data_dir / "keys.sqlite3")) as source,
            contextlib.closing(sqlite3.connect(second / "keys.sqlite3")) as copy,
        ):
            source.backup(copy)
        fronts.append(start_front(second, urls, key, key_name="second"))
        chosen: dict[str, set[str]] = {}
        for i in range(10):
            session = f"affinity-{i}"
            for turn, front in enumerate([fronts[0], fronts[1], fronts[0]]):
                request_id = f"aff-{i}-{turn}"
                client = front.openai(default_headers={"x-request-id": request_id})
                client.api_key = fronts[0].key
                client.chat.completions.create(
                    model="default",
                    messages=[{"role": "user", "content": "Hi"}],
                    max_tokens=1,
                    extra_body={"session_id": session},
                )
                chosen.setdefault(session, set()).add(front.backend_of(request_id))
        assert all(len(backends) == 1 for backends in chosen.values()), chosen
        assert set().union(*chosen.values()) == {llama_cpp.base_url, upstream.base_url}, chosen
    finally:
        for front in fronts:
            front.server.stop()


def _stream_until_killed(front: Front, pool: dict[str, LlamaCppServer], request_id: str, dialect: str) -> Exception:
    """Start a long stream, kill the backend serving it after its first text, and return what
    the SDK raised (it must raise: the answer was cut)."""
    try:
        if dialect == "openai":
            client = front.openai(default_headers={"x-request-id": request_id})
            stream = client.chat.completions.create(
                model="default", messages=[{"role": "user", "content": LONG}], max_tokens=300, stream=True
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    pool[front.backend_of(request_id)].kill()  # a no-op after the first time
        else:
            claude = anthropic.Anthropic(
                base_url=front.server.base_url,
                api_key=front.key,
                max_retries=0,
                default_headers={"x-request-id": request_id},
            )
            with claude.messages.stream(
                model="default", max_tokens=300, messages=[{"role": "user", "content": LONG}]
            ) as events:
                for text in events.text_stream:
                    if text:
                        pool[front.backend_of(request_id)].kill()
    except (openai.APIError, anthropic.APIError) as exc:
        return exc
    raise AssertionError("the stream finished although its backend was killed")


def test_a_backend_killed_mid_stream(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A backend killed mid-stream: the stream ends with the dialect's error (never a normal
    finish), the next request goes to the other backend; with both gone it is a 503 with
    Retry-After (Anthropic: 529 overloaded_error); a backend that comes back is used again."""
    home = tmp_path_factory.mktemp("kill")
    first, second = (LlamaCppServer(home / f"llama-{i}.log").start() for i in range(2))
    pool = {first.base_url: first, second.base_url: second}
    front = start_front(home / "front", list(pool), None)
    try:
        error = _stream_until_killed(front, pool, "kill-openai", "openai")
        assert isinstance(error, openai.APIError)
        killed = front.backend_of("kill-openai")
        survivor = next(url for url in pool if url != killed)
        after = front.openai(default_headers={"x-request-id": "after-kill"}).chat.completions.create(
            model="default", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
        assert after.choices[0].message.content and front.backend_of("after-kill") == survivor
        pool[killed].start(pool[killed].port)  # back on its port: the prober puts it back in
        deadline = time.monotonic() + 60
        while "is back" not in front.server.log() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "is back" in front.server.log()
        error = _stream_until_killed(front, pool, "kill-anthropic", "anthropic")
        assert isinstance(error, anthropic.APIError)
        for server in pool.values():
            server.kill()
        down = httpx.post(
            f"{front.server.base_url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {front.key}"},
            json={"model": "default", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
            timeout=60,
        )
        assert down.status_code == 503 and int(down.headers["retry-after"]) >= 1
        assert down.json()["error"]["message"]
        overloaded = httpx.post(
            f"{front.server.base_url}/v1/messages",
            headers={"x-api-key": front.key, "anthropic-version": "2023-06-01"},
            json={"model": "default", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
            timeout=60,
        )
        assert overloaded.status_code == 529 and overloaded.json()["error"]["type"] == "overloaded_error"
        assert httpx.get(f"{front.server.base_url}/health").status_code == 200
    finally:
        front.server.stop()
        for server in pool.values():
            server.kill()


def test_cli_refuses_a_model_with_upstream_and_a_bad_url(tmp_path: Path) -> None:
    from tests.servers import cli, one_line_error

    model = str(embedded_model())
    both = cli("run", "--model", model, "--upstream", "http://127.0.0.1:9", "-p", str(free_port()), home=tmp_path)
    assert "--upstream" in one_line_error(both)
    bad = cli("run", "--upstream", "ftp://example.com", "-p", str(free_port()), home=tmp_path)
    assert "--upstream" in one_line_error(bad)


# -- llama-server, when a binary is at hand (bench/README.md says how to build one) ---------------

LLAMA_SERVER = os.environ.get("TOOLSTUDIO_LLAMA_SERVER", "")


@pytest.fixture(scope="module")
def llama_server_front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    if not (LLAMA_SERVER and os.access(LLAMA_SERVER, os.X_OK)):
        pytest.skip("set TOOLSTUDIO_LLAMA_SERVER to a llama-server binary to test it as an upstream")
    home = tmp_path_factory.mktemp("llama-server")
    port = free_port()
    env = {**os.environ, "LD_LIBRARY_PATH": str(Path(LLAMA_SERVER).parent)}
    args = ["-m", str(embedded_model()), "--port", str(port), "--host", "127.0.0.1", "-np", "2", "-c", "8192"]
    with (home / "server.log").open("wb") as log:
        proc = subprocess.Popen(
            [LLAMA_SERVER, *args, "-t", "1", "--no-webui", "--jinja"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc=proc)
        front = start_front(home / "front", [f"http://127.0.0.1:{port}"], None)
        yield front
        front.server.stop()
    finally:
        proc.kill()
        proc.wait()


def test_llama_server_upstream(llama_server_front: Front) -> None:
    """Exact token counts (its /apply-template + /tokenize), cached tokens, a prefill it echoes
    back (dropped by the front-end), json_schema, and tools refused by name: SmolLM2's template
    has none, and llama-server then ignores them (measured)."""
    front = llama_server_front
    client = front.openai()
    messages = [{"role": "user", "content": "Name a colour."}]
    counted = front.anthropic().messages.count_tokens(model="default", messages=messages).input_tokens  # type: ignore[arg-type]
    for _ in range(2):
        chat = client.chat.completions.create(model="default", messages=messages, max_tokens=4)  # type: ignore[arg-type]
    assert chat.usage is not None and chat.usage.prompt_tokens == counted
    assert chat.usage.prompt_tokens_details and chat.usage.prompt_tokens_details.cached_tokens
    prefilled = front.anthropic().messages.create(
        model="default",
        max_tokens=8,
        messages=[
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "The capital of France is"},
        ],
    )
    text = "".join(b.text for b in prefilled.content if b.type == "text")
    assert text and not text.startswith("The capital")
    person = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Alice is 30 years old. Give her name and age."}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}},
        max_tokens=60,
    )
    assert set(json.loads(person.choices[0].message.content or "")) == {"name", "age"}
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=[{"type": "function", "function": WEATHER}],  # type: ignore[list-item]
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            max_tokens=40,
        )
    assert refused.value.body["param"] == "tool_choice"  # type: ignore[index]
