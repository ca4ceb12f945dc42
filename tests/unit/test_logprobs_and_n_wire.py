"""Wire shapes of logprobs (Chat Completions, Responses) and of `n > 1` (Chat Completions),
with the scripted FakeEngine behind the real server and the official openai SDK in front.
The real model's numbers are checked in tests/integration/test_logprobs_and_n.py."""

from __future__ import annotations

import dataclasses
from typing import Any

import openai
import pytest

from runtime.events import ChoiceEvent, Event, Finished, TextDelta, TokenLogprob, TopLogprob, Usage
from tests.conftest import FakeServer

HI = [{"role": "user", "content": "hi"}]
SAID = [
    TokenLogprob(b"Hi", -0.25, (TopLogprob(b"Hi", -0.25), TopLogprob(b"Hey", -2.0))),
    TokenLogprob(b" \xc3", -1.5, (TopLogprob(b" \xc3", -1.5), TopLogprob(b" there", -1.75))),
    TokenLogprob(b"\xa9", -0.01, (TopLogprob(b"\xa9", -0.01), TopLogprob(b"!", -5.0))),
]
# The engine attaches a token's logprobs to the text it became (the last two are one "é").
WITH_LOGPROBS: list[Event] = [TextDelta("Hi", (SAID[0],)), TextDelta(" é", (SAID[1], SAID[2]))]


def expected_chat_content() -> list[dict[str, Any]]:
    def entry(token: bytes, logprob: float) -> dict[str, Any]:
        return {"token": token.decode("utf-8", "backslashreplace"), "logprob": logprob, "bytes": list(token)}

    return [{**entry(e.token, e.logprob), "top_logprobs": [entry(t.token, t.logprob) for t in e.top]} for e in SAID]


def test_chat_logprobs_non_stream(fake_server: FakeServer) -> None:
    fake_server.engine.enqueue(WITH_LOGPROBS)
    response = fake_server.openai().chat.completions.create(model="m", messages=HI, logprobs=True, top_logprobs=2)
    assert fake_server.engine.requests[-1].sampling.logprobs == 2
    choice = response.choices[0]
    assert choice.message.content == "Hi é"
    assert choice.logprobs is not None and choice.logprobs.content is not None
    assert [c.model_dump() for c in choice.logprobs.content] == expected_chat_content()
    # The bytes of the tokens add up to the text, even where a token splits a character.
    assert b"".join(bytes(c.bytes or []) for c in choice.logprobs.content).decode() == "Hi é"


def test_chat_logprobs_stream(fake_server: FakeServer) -> None:
    fake_server.engine.enqueue(WITH_LOGPROBS)
    stream = fake_server.openai().chat.completions.create(
        model="m", messages=HI, logprobs=True, top_logprobs=2, stream=True
    )
    content = []
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content and choice.logprobs is not None:
                content += [c.model_dump() for c in choice.logprobs.content or []]
    assert content == expected_chat_content()


def test_chat_without_logprobs_asks_for_none(fake_server: FakeServer) -> None:
    fake_server.engine.enqueue("plain answer")
    response = fake_server.openai().chat.completions.create(model="m", messages=HI)
    assert fake_server.engine.requests[-1].sampling.logprobs is None  # nothing computed
    assert response.choices[0].logprobs is None


def test_chat_logprobs_true_alone_means_no_alternatives(fake_server: FakeServer) -> None:
    fake_server.engine.enqueue("x")
    fake_server.openai().chat.completions.create(model="m", messages=HI, logprobs=True)
    assert fake_server.engine.requests[-1].sampling.logprobs == 0


@pytest.mark.parametrize(
    "body",
    [
        {"logprobs": True, "top_logprobs": 21},
        {"logprobs": True, "top_logprobs": -1},
        {"top_logprobs": 3},  # without logprobs: true
    ],
)
def test_chat_bad_logprobs_are_400(fake_server: FakeServer, body: dict[str, Any]) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        fake_server.openai().chat.completions.create(model="m", messages=HI, extra_body=body)
    assert raised.value.status_code == 400
    assert not fake_server.engine.requests


def test_responses_logprobs_included(fake_server: FakeServer) -> None:
    fake_server.engine.enqueue(WITH_LOGPROBS)
    response = fake_server.openai().responses.create(
        model="m", input="hi", include=["message.output_text.logprobs"], top_logprobs=2
    )
    assert fake_server.engine.requests[-1].sampling.logprobs == 2
    part = response.output[0].content[0]  # type: ignore[union-attr]
    assert part.type == "output_text"
    assert [lp.model_dump() for lp in part.logprobs or []] == expected_chat_content()


def test_responses_logprobs_streamed_on_the_deltas(fake_server: FakeServer) -> None:
    fake_server.engine.enqueue(WITH_LOGPROBS)
    stream = fake_server.openai().responses.create(
        model="m", input="hi", include=["message.output_text.logprobs"], top_logprobs=2, stream=True
    )
    deltas: list[dict[str, Any]] = []
    done: list[dict[str, Any]] = []
    for event in stream:
        if event.type == "response.output_text.delta":
            deltas += [lp.model_dump() for lp in event.logprobs]
        elif event.type == "response.output_text.done":
            done = [lp.model_dump() for lp in event.logprobs]
    without_bytes = [
        {
            "token": e["token"],
            "logprob": e["logprob"],
            "top_logprobs": [{"token": t["token"], "logprob": t["logprob"]} for t in e["top_logprobs"]],
        }
        for e in expected_chat_content()
    ]
    assert deltas == without_bytes
    assert done == without_bytes


def test_responses_without_include_asks_for_none(fake_server: FakeServer) -> None:
    fake_server.engine.enqueue("plain")
    response = fake_server.openai().responses.create(model="m", input="hi", top_logprobs=3)
    assert fake_server.engine.requests[-1].sampling.logprobs is None
    assert response.output[0].content[0].logprobs == []  # type: ignore[union-attr]


def test_responses_unknown_include_is_400(fake_server: FakeServer) -> None:
    with pytest.raises(openai.BadRequestError):
        fake_server.openai().responses.create(model="m", input="hi", include=["message.output_text.nonsense"])  # type: ignore[list-item]


# -- n > 1 ------------------------------------------------------------------------------------

TWO_CHOICES: list[Event] = [
    ChoiceEvent(0, TextDelta("Red")),
    ChoiceEvent(1, TextDelta("Blue")),
    ChoiceEvent(1, TextDelta(" sky")),
    ChoiceEvent(1, Finished("stop")),
    ChoiceEvent(0, TextDelta(" apple")),
    ChoiceEvent(0, Finished("length")),
    Usage(prompt_tokens=9, completion_tokens=4),
]


def test_n_choices_non_stream(fake_server: FakeServer) -> None:
    fake_server.engine.enqueue(TWO_CHOICES)
    response = fake_server.openai().chat.completions.create(model="m", messages=HI, n=2)
    assert fake_server.engine.requests[-1].n == 2
    assert [(c.index, c.message.content, c.finish_reason) for c in response.choices] == [
        (0, "Red apple", "length"),
        (1, "Blue sky", "stop"),
    ]
    assert response.usage is not None
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (9, 4)  # the prompt once


def test_n_choices_stream_carry_their_index(fake_server: FakeServer) -> None:
    fake_server.engine.enqueue(TWO_CHOICES)
    stream = fake_server.openai().chat.completions.create(
        model="m", messages=HI, n=2, stream=True, stream_options={"include_usage": True}
    )
    text = {0: "", 1: ""}
    finish: dict[int, str] = {}
    roles = set()
    usage = None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            if choice.delta.role:
                roles.add(choice.index)
            text[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                assert choice.index not in finish  # one finish per choice
                finish[choice.index] = choice.finish_reason
    assert roles == {0, 1}
    assert text == {0: "Red apple", 1: "Blue sky"}
    assert finish == {0: "length", 1: "stop"}
    assert usage is not None and usage.prompt_tokens == 9


def test_n_above_the_bound_is_400(fake_server: FakeServer) -> None:
    runtime = fake_server.server.app.state.runtime
    runtime.config = dataclasses.replace(runtime.config, engine=dataclasses.replace(runtime.config.engine, max_n=3))
    with pytest.raises(openai.BadRequestError) as raised:
        fake_server.openai().chat.completions.create(model="m", messages=HI, n=4)
    assert raised.value.status_code == 400
    fake_server.engine.enqueue([ChoiceEvent(i, TextDelta("x")) for i in range(3)])
    assert len(fake_server.openai().chat.completions.create(model="m", messages=HI, n=3).choices) == 3
    assert len(fake_server.engine.requests) == 1


def test_n_with_server_tools_is_400(fake_server: FakeServer) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        fake_server.openai().chat.completions.create(
            model="m", messages=HI, n=2, extra_body={"enable_tools": True, "enabled_tools": ["python"]}
        )
    assert raised.value.status_code == 400
    assert not fake_server.engine.requests
