"""Greedy decoding gives the same tokens however the prompt reached the KV cache (README, "What
is deterministic"): cold, the same request again (all but its last prompt token cached), and
after a sibling that shares its system prompt; streamed or not. On the real server with the
packaged model (a CPU-only llama.cpp build), one request at a time: requests decoded together
are not covered by the promise.

Prompt caches are per API key, so a fresh key is a cold cache."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.servers import CliServer, toolstudio

pytestmark = pytest.mark.integration

SYSTEM = "You are a patient teacher. " + "Explain every step in short sentences. " * 12
QUESTIONS = ["How do tides work?", "Why is the sky blue?", "What causes the seasons?", "How do bees make honey?"]
TOKENS = 40


def client(server: CliServer, key: str | None = None) -> openai.OpenAI:
    key = key or toolstudio("keys", "create", data_dir=server.data_dir).strip()  # a fresh key: a cold cache
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0, timeout=300)


def ask(oai: openai.OpenAI, question: str, **extra: Any) -> str:
    messages: Any = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    reply = oai.chat.completions.create(model="m", messages=messages, max_tokens=TOKENS, temperature=0, **extra)
    return reply.choices[0].message.content or ""


def test_greedy_output_does_not_depend_on_the_prompt_cache(real_server: CliServer) -> None:
    cold = [ask(client(real_server), q) for q in QUESTIONS[:2]]
    assert all(cold)
    long = "Here is some background you may use. " * 40 + QUESTIONS[3]  # a longer prompt too
    cold_long = ask(client(real_server), long)

    warm = client(real_server)
    for question, expected in zip(QUESTIONS[:2], cold, strict=True):
        assert ask(warm, question) == expected
        assert ask(warm, question) == expected  # all but its last prompt token from the slot's KV

    assert ask(warm, long) == cold_long
    assert ask(warm, long) == cold_long

    shared = client(real_server)
    assert ask(shared, QUESTIONS[2]) != ""  # a sibling: same system prompt, another question
    assert ask(shared, QUESTIONS[0]) == cold[0]  # the system prompt from the sibling's KV
    assert ask(shared, long) == cold_long

    streamed = warm.chat.completions.create(
        model="m",
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[1]}],
        max_tokens=TOKENS,
        temperature=0,
        stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == cold[1]
