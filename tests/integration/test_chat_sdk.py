"""Chat Completions and models through the official `openai` SDK against the real server
(`toolstudio run` with the packaged SmolLM2 model)."""

from __future__ import annotations

import concurrent.futures
import time
from typing import Any

import httpx
import openai
import pytest

from tests.servers import CliServer, metric, toolstudio

pytestmark = pytest.mark.integration

PARIS = [{"role": "user", "content": "Tell me two facts about Paris."}]


def test_basic_chat(oai: openai.OpenAI) -> None:
    response = oai.chat.completions.create(model="default", messages=PARIS, max_tokens=40)
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content and len(choice.message.content.split()) >= 3
    assert choice.finish_reason in ("stop", "length")
    assert response.model == "SmolLM2-135M-Instruct"  # the real id, whatever name was asked for
    assert response.usage is not None
    assert response.usage.prompt_tokens > 10
    assert 0 < response.usage.completion_tokens <= 40


def test_stream_matches_non_stream_and_usage_only_when_asked(oai: openai.OpenAI) -> None:
    kwargs = dict(model="default", messages=PARIS, max_tokens=30, temperature=0.0)
    non_stream = oai.chat.completions.create(**kwargs)
    whole = non_stream.choices[0].message.content

    chunks = list(oai.chat.completions.create(stream=True, **kwargs))
    assert all(c.usage is None for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert len({c.id for c in chunks}) == 1

    with_usage = list(oai.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    assert with_usage[-1].choices == []
    assert with_usage[-1].usage is not None
    assert non_stream.usage is not None
    assert with_usage[-1].usage.completion_tokens == non_stream.usage.completion_tokens > 0


def test_max_tokens_and_stop(oai: openai.OpenAI) -> None:
    short = oai.chat.completions.create(model="m", messages=PARIS, max_completion_tokens=3, temperature=0)
    assert short.choices[0].finish_reason == "length"
    assert short.usage is not None and short.usage.completion_tokens == 3

    free = oai.chat.completions.create(model="m", messages=PARIS, max_tokens=40, temperature=0)
    text = free.choices[0].message.content or ""
    word = text.split()[2]
    stopped = oai.chat.completions.create(model="m", messages=PARIS, max_tokens=40, temperature=0, stop=[word])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == text[: text.index(word)]


def test_seed_makes_sampling_repeatable(oai: openai.OpenAI) -> None:
    kwargs = dict(model="m", messages=PARIS, max_tokens=25, temperature=1.0, seed=1234)
    first = oai.chat.completions.create(**kwargs).choices[0].message.content
    second = oai.chat.completions.create(**kwargs).choices[0].message.content
    assert first == second


def test_multi_turn_roles(oai: openai.OpenAI) -> None:
    response = oai.chat.completions.create(
        model="default",
        messages=[
            {"role": "developer", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": "Say hello."}]},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Again."},
        ],
        max_tokens=10,
    )
    assert response.choices[0].message.content


def test_models(oai: openai.OpenAI) -> None:
    ids = [m.id for m in oai.models.list().data]
    assert ids == ["SmolLM2-135M-Instruct"]
    assert oai.models.retrieve("default").id == "SmolLM2-135M-Instruct"
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("no-such-model")


def test_health_is_open(real_server: CliServer) -> None:
    body = httpx.get(f"{real_server.base_url}/health").json()
    assert body["status"] == "ok"


# -- auth ---------------------------------------------------------------------------------------


def test_missing_and_wrong_key_are_401(real_server: CliServer) -> None:
    response = httpx.post(f"{real_server.base_url}/v1/chat/completions", json={"model": "m", "messages": PARIS})
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"

    wrong = openai.OpenAI(base_url=f"{real_server.base_url}/v1", api_key="sk-unsloth-" + "0" * 32, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()


def test_x_api_key_alone_or_beside_a_dummy_bearer(real_server: CliServer, real_key: str) -> None:
    client = openai.OpenAI(
        base_url=f"{real_server.base_url}/v1", api_key="dummy", default_headers={"x-api-key": real_key}
    )
    assert client.models.list().data
    response = httpx.get(f"{real_server.base_url}/v1/models", headers={"x-api-key": real_key})
    assert response.status_code == 200


def test_revoked_key_stops_working_without_restart(real_server: CliServer) -> None:
    key = toolstudio("keys", "create", "--name", "short-lived", data_dir=real_server.data_dir).strip()
    client = openai.OpenAI(base_url=f"{real_server.base_url}/v1", api_key=key, max_retries=0)
    assert client.models.list().data
    listing = toolstudio("keys", "list", data_dir=real_server.data_dir)
    assert "short-lived" in listing and key not in listing  # never the secret
    toolstudio("keys", "revoke", "short-lived", data_dir=real_server.data_dir)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


# -- disconnects and concurrency ------------------------------------------------------------------


def _active(real_server: CliServer) -> int:
    return int(httpx.get(f"{real_server.base_url}/health").json()["active"])


def test_disconnect_mid_stream_frees_the_engine(oai: openai.OpenAI, real_server: CliServer) -> None:
    stream = oai.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "Write a very long story."}], max_tokens=2000, stream=True
    )
    for i, _ in enumerate(stream):
        if i == 5:
            break
    assert _active(real_server) == 1
    stream.close()
    deadline = time.monotonic() + 2.0
    while _active(real_server) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _active(real_server) == 0
    started = time.monotonic()
    follow_up = oai.chat.completions.create(model="m", messages=PARIS, max_tokens=5)
    assert follow_up.choices[0].message.content
    assert time.monotonic() - started < 10


def test_four_concurrent_requests_match_their_solo_answers(oai: openai.OpenAI) -> None:
    prompts = [
        "What is the capital of France?",
        "Name three colors.",
        "Count from one to five.",
        "What do bees make?",
    ]

    def ask(prompt: str) -> str:
        messages = [{"role": "user", "content": prompt}]
        chunks = oai.chat.completions.create(model="m", messages=messages, max_tokens=24, temperature=0, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    solo = [ask(p) for p in prompts]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        together = list(pool.map(ask, prompts))
    assert all(answer.strip() for answer in together)
    assert together == solo  # batched decoding never mixes tokens between requests


# -- bad input --------------------------------------------------------------------------------------

MALFORMED = [
    ("bad json", b'{"model": "m", "messages": [', "not valid JSON"),
    ("empty body", b"", "empty"),
    ("not an object", b"[1, 2]", "Expected `object`"),
    ("missing messages", b'{"model": "m"}', "messages"),
    ("missing model", b'{"messages": [{"role": "user", "content": "hi"}]}', "model"),
    ("empty messages", b'{"model": "m", "messages": []}', "messages"),
    ("unknown role", b'{"model": "m", "messages": [{"role": "wizard", "content": "hi"}]}', "role"),
    ("content wrong type", b'{"model": "m", "messages": [{"role": "user", "content": 5}]}', "content"),
    ("negative max_tokens", b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}', "max_tokens"),
    ("temperature type", b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}', "temperature"),
    ("temperature range", b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 9}', "temperature"),
    ("n above --max-n", b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 9}', "at most 8"),
    ("top_logprobs above 20", b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "logprobs": true, "top_logprobs": 21}', "top_logprobs"),
    ("bad part type", b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "video", "x": 1}]}]}', "video"),
    ("tool without id", b'{"model": "m", "messages": [{"role": "tool", "content": "42"}]}', "tool_call_id"),
    ("bad tool_choice", b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "tool_choice": {"type": "function", "function": {"name": "nope"}}}', "nope"),
    ("bad image uri", b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]}]}', "base64"),
    ("stream type", b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', "stream"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "body", "needle"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_requests_get_a_clear_4xx(
    real_server: CliServer, real_key: str, name: str, body: bytes, needle: str
) -> None:
    response = httpx.post(
        f"{real_server.base_url}/v1/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {real_key}", "Content-Type": "application/json"},
    )
    assert 400 <= response.status_code < 500, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert needle.lower() in error["message"].lower()


def test_prompt_over_the_context_window(oai: openai.OpenAI) -> None:
    huge = "hello " * 5000
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as caught:
            result = oai.chat.completions.create(model="m", messages=[{"role": "user", "content": huge}], stream=stream)
            list(result) if stream else None  # type: ignore[call-overload]
        assert caught.value.code == "context_length_exceeded"


def test_unknown_extra_fields_are_accepted(oai: openai.OpenAI) -> None:
    response = oai.chat.completions.create(
        model="m", messages=PARIS, max_tokens=5, extra_body={"some_vendor_field": {"x": 1}, "top_k": 5, "min_p": 0.1}
    )
    assert response.choices[0].message.content is not None


def test_metrics_show_decode_threads_and_the_host_kv_cache(real_server: CliServer, oai: openai.OpenAI) -> None:
    for i in range(5):  # more distinct conversations than the 4 slots: slot contents go to RAM
        content = f"Conversation {i}: " + f"tell me about topic number {i}. " * 12
        oai.chat.completions.create(model="default", messages=[{"role": "user", "content": content}], max_tokens=2)
    text = httpx.get(f"{real_server.base_url}/metrics").text
    assert metric(text, "toolstudio_decode_threads") == 2  # --threads 2: fixed, not adaptive
    assert metric(text, "toolstudio_kv_host_cache_bytes") > 0


def test_cached_prompts_are_not_shared_between_keys(real_server: CliServer, oai: openai.OpenAI) -> None:
    """Time to first token would otherwise tell one key what another key's prompts start with."""
    other_key = toolstudio("keys", "create", "--name", "other", data_dir=real_server.data_dir).strip()
    other = openai.OpenAI(base_url=f"{real_server.base_url}/v1", api_key=other_key, max_retries=0, timeout=120)
    messages: list[Any] = [
        {"role": "system", "content": "A secret preamble: " + "the launch code is in the blue folder. " * 8},
        {"role": "user", "content": "Say hi."},
    ]
    oai.chat.completions.create(model="default", messages=messages, max_tokens=2)
    again = oai.chat.completions.create(model="default", messages=messages, max_tokens=2).usage
    assert again is not None and again.prompt_tokens_details is not None
    assert again.prompt_tokens_details.cached_tokens == again.prompt_tokens - 1  # same key: reused
    theirs = other.chat.completions.create(model="default", messages=messages, max_tokens=2).usage
    assert theirs is not None
    assert not (theirs.prompt_tokens_details and theirs.prompt_tokens_details.cached_tokens)  # other key: none
