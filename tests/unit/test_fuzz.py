"""Property-based fuzzing of every HTTP endpoint, against a server around the scripted FakeEngine.

What a client (and an operator) relies on, whatever bytes arrive:
- every answer is a 2xx or a 4xx, never a 5xx, and comes within a time bound;
- an error is JSON in the dialect's own shape (`{"error": {...}}` on OpenAI paths,
  `{"type": "error", "error": {...}}` on /v1/messages), so SDKs raise their typed errors;
- a 2xx stream is well-formed SSE that ends the way the dialect ends a stream;
- nothing is logged at ERROR (an unhandled exception is logged there even when the client
  sees a 4xx or a stream that already started);
- the server keeps serving afterwards.

What is generated: arbitrary bytes and JSON values; bodies shaped by the wire structs' own JSON
Schemas, both well-typed (so they get past decoding and reach the adapters and renderers) and
near misses (a wrong type here, a missing field there); truncations; pathological JSON (deep
nesting, huge numbers, invalid UTF-8); path parameters, query strings and methods; headers,
content types and both auth headers; broken HTTP on the socket; and scripted model output
(random text, reasoning and tool calls) pushed through every renderer. No generated URL leaves
the machine: image URLs are data URIs or loopback addresses, which the server refuses unfetched.

`TOOLSTUDIO_FUZZ_SCALE=10 pytest tests/unit/test_fuzz.py` runs ten times as many examples.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dialects.anthropic.protocol import CountTokensRequest, CreateMessageRequest
from dialects.openai_chat.protocol import ChatCompletionRequest
from dialects.openai_responses.protocol import (
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionTool,
    MessageItem,
    ReasoningItem,
    ResponsesRequest,
)
from runtime.engine.fake import FakeEngine
from runtime.events import (
    Event,
    Finished,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
)
from runtime.hookspecs import hookimpl
from runtime.plugins import load_plugins
from runtime.tools import Tool, ToolContext, ToolOutput
from tests.conftest import FakeServer, serve_fake
from tests.servers import CliServer

SCALE = max(1, int(os.environ.get("TOOLSTUDIO_FUZZ_SCALE", "1")))
TIME_BOUND = 5.0  # seconds for any one answer; the FakeEngine answers in milliseconds
SMALL_BODY_LIMIT = 2048  # bytes, for the body-size server


def fuzz_settings(examples: int) -> settings:
    # deadline=None: the time bound is asserted per request instead, with a clear message,
    # rather than hypothesis's per-example deadline, which also counts strategy drawing.
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )


# -- the server under test ------------------------------------------------------------------------


class EchoTool:
    """A harmless server tool: fuzzed tool names and arguments never reach a real sandbox."""

    name = "echo"
    description = "Repeat the text back."
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": {"text": {"type": "string"}},
        "required": ["text"],
    }

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> ToolOutput:
        return ToolOutput(str(arguments["text"]))


class EchoPlugin:
    @hookimpl
    def register_tools(self, register: Callable[[Tool], None]) -> None:
        register(EchoTool())


class ErrorLog(logging.Handler):
    """Keeps every ERROR record the server logs (it runs in a thread of this process)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def take(self) -> list[str]:
        taken = [f"{r.name}: {r.getMessage()}\n{self.format(r)}" for r in self.records]
        self.records.clear()
        return taken


@dataclass
class Target:
    server: FakeServer
    client: httpx.Client
    errors: ErrorLog

    @property
    def engine(self) -> FakeEngine:
        return self.server.engine

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.server.key}"}

    def send(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        """One request, with the properties every answer must have checked on the spot."""
        started = time.monotonic()
        response = self.client.request(method, path, content=body, headers=headers)
        elapsed = time.monotonic() - started
        check_answer(path, response, elapsed, self.errors.take(), body)
        return response


@contextlib.contextmanager
def fake_target(tmp_path: Path, engine: FakeEngine, **server_options: Any) -> Iterator[Target]:
    """A FakeEngine server, a client for it, and the ERROR records it logs while it runs."""
    errors = ErrorLog()
    root = logging.getLogger()
    root.addHandler(errors)
    try:
        with (
            serve_fake(tmp_path, engine, **server_options) as server,
            httpx.Client(base_url=server.base_url, timeout=TIME_BOUND * 2) as client,
        ):
            yield Target(server, client, errors)
    finally:
        root.removeHandler(errors)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    tools = load_plugins([EchoPlugin()], load_entry_points=False, default_plugins=(), search_provider=None)
    with fake_target(tmp_path_factory.mktemp("fuzz"), FakeEngine(), tools=tools) as fuzzed:
        yield fuzzed
        # Whatever the fuzzing did, the server still answers a plain request correctly.
        assert fuzzed.client.get("/health").json()["status"] == "ok"
        fuzzed.engine.enqueue("still here")
        answer = fuzzed.client.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            headers=fuzzed.auth,
        )
        assert answer.json()["choices"][0]["message"]["content"] == "still here"


@pytest.fixture(autouse=True)
def fresh_engine(target: Target) -> Iterator[None]:
    target.engine.scripts.clear()
    target.errors.take()
    yield
    target.engine.scripts.clear()


# -- the properties -------------------------------------------------------------------------------


def is_anthropic(path: str) -> bool:
    return path.startswith("/v1/messages")


def check_answer(
    path: str,
    response: httpx.Response,
    elapsed: float,
    errors: list[str],
    body: bytes | None = None,
    bound: float = TIME_BOUND,
) -> None:
    where = f"{response.request.method} {path} -> {response.status_code}; body sent: {body[:300] if body else body!r}"
    assert response.status_code < 500, f"{where}\n{response.text[:500]}\n{''.join(errors)}"
    assert elapsed < bound, f"{where}: took {elapsed:.1f} s"
    assert not errors, f"{where}: the server logged errors:\n" + "\n".join(errors)
    if response.request.method == "HEAD":
        return  # no body to look at
    if response.status_code >= 400:
        check_error_shape(path, response)
    elif response.headers.get("content-type", "").startswith("text/event-stream"):
        check_stream(path, response.text, ok=True)
    elif response.headers.get("content-type", "").startswith("application/json"):
        response.json()


def check_error_shape(path: str, response: httpx.Response) -> None:
    assert response.headers.get("content-type", "").startswith("application/json"), response.headers
    body = response.json()
    if is_anthropic(path):
        assert body["type"] == "error", body
        assert set(body["error"]) == {"type", "message"}, body
        assert isinstance(body["error"]["type"], str) and isinstance(body["error"]["message"], str)
    else:
        assert set(body) == {"error"}, body
        assert isinstance(body["error"]["message"], str) and isinstance(body["error"]["type"], str), body
        assert {"param", "code"} <= set(body["error"]), body


@dataclass(frozen=True)
class Frame:
    event: str | None
    data: str


def sse_frames(text: str) -> list[Frame]:
    frames = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        event, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        frames.append(Frame(event, "\n".join(data)))
    return frames


def check_stream(path: str, text: str, *, ok: bool) -> list[Any]:
    """Every frame parses, and the stream ends the way the dialect ends one. Returns the payloads.

    `ok`: the request was one the server must serve, so the stream may not fail in-band either
    (no `error` payload, and it ends with `[DONE]`, `message_stop` or a completed/incomplete
    response); otherwise a stream may also end in the dialect's error event."""
    frames = sse_frames(text)
    assert frames, "an empty stream"
    payloads = []
    for frame in frames:
        if frame.data == "[DONE]":
            continue
        payload = json.loads(frame.data)
        assert isinstance(payload, dict), frame
        payloads.append(payload)
    if ok:
        # The FakeEngine never fails: after a 200, an in-band error is the server's own bug.
        failed = [p for p in payloads if p.get("type") in ("error", "response.failed") or "error" in p]
        assert not failed, failed[:3]
    if path == "/v1/chat/completions":
        assert frames[-1].data == "[DONE]", frames[-3:]
    elif is_anthropic(path):
        assert payloads[0]["type"] == "message_start", payloads[0]
        assert payloads[-1]["type"] in (("message_stop",) if ok else ("message_stop", "error")), payloads[-1]
    elif path == "/v1/responses":
        assert payloads[0]["type"] == "response.created", payloads[0]
        ends = ("response.completed", "response.incomplete")
        assert payloads[-1]["type"] in (ends if ok else (*ends, "response.failed", "error")), payloads[-1]
    return payloads


# -- strategies: JSON values, strings that tend to break things -----------------------------------

NASTY_STRINGS = [
    "",
    " ",
    "default",
    "fake-model",
    "echo",
    "python",
    "bash",
    "terminal",
    "get_weather",
    "../../etc/passwd",
    "/etc/shadow",
    "\x00",
    "a\x00b",
    "{",
    '{"text": "hi"}',
    "[]",
    "null",
    "\u202e\u0301\ufeff",
    "😀" * 3,
    "%s%n%x",
    "<|im_start|>system\n",
    "{{ raise('x') }}",
    "{% for x in range(999999999) %}{% endfor %}",
    "x" * 300,
]

text = st.one_of(st.text(max_size=24), st.sampled_from(NASTY_STRINGS))


def rarely(usual: st.SearchStrategy[Any], odd: st.SearchStrategy[Any], one_in: int) -> st.SearchStrategy[Any]:
    """`odd` about once in `one_in` draws: wrong values must be rare enough that most bodies
    still get past decoding, or the adapters behind it are never reached."""
    return st.integers(0, one_in - 1).flatmap(lambda n: odd if n == 0 else usual)


# Lone surrogates cannot cross as UTF-8, but do as JSON escapes (`"\ud800"`); see `encode`.
lone_surrogates = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    text,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)),
    max_leaves=12,
)
json_objects = st.dictionaries(text, json_values, max_size=5)
# `json.dumps` writes these as NaN/Infinity, which are not JSON, and clients still send them.
wrong_values = st.one_of(json_values, st.sampled_from([float("nan"), float("inf"), float("-inf")]))


def encode(value: Any, *, ascii_only: bool = True) -> bytes:
    raw = json.dumps(value, ensure_ascii=ascii_only, allow_nan=True)
    return raw.encode("utf-8", "surrogatepass")


PIXEL_PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
    )
).decode()

# Never a public host: a private or loopback URL is refused by the image fetcher before any
# connection, and a data URI is decoded in process.
image_urls = st.one_of(
    st.just(f"data:image/png;base64,{PIXEL_PNG}"),
    st.builds(lambda b: "data:image/png;base64," + base64.b64encode(b).decode(), st.binary(max_size=64)),
    st.builds(lambda s: "data:image/png;base64," + s, text),
    st.sampled_from(
        [
            "data:image/png,notbase64",
            "data:;base64,",
            "http://127.0.0.1:9/x.png",
            "http://localhost:9/x.png",
            "http://[::1]:9/x.png",
            "https://10.0.0.1/x.png",
            "http://169.254.169.254/latest/meta-data/",
            "file:///etc/passwd",
            "ftp://127.0.0.1/x",
            "javascript:alert(1)",
            "http://",
            "",
        ]
    ),
)

schema_like = st.recursive(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["object", "string", "integer", "number", "boolean", "array", "null", "weird"])},
        optional={
            "enum": st.lists(json_values, max_size=3),
            "pattern": st.sampled_from(["^a+$", "(", "[", "\\", ".*"]),
            "minLength": st.integers(-3, 5),
            "maxItems": st.integers(-3, 5),
            "$ref": st.sampled_from(["#", "#/nowhere", "http://127.0.0.1:9/schema"]),
            "format": st.sampled_from(["date-time", "email", "uuid", "nonsense"]),
        },
    ),
    lambda inner: st.fixed_dictionaries(
        {"type": st.just("object")},
        optional={
            "properties": st.dictionaries(text, inner, max_size=3),
            "required": st.lists(text, max_size=3),
            "additionalProperties": st.one_of(st.booleans(), inner),
            "items": inner,
            "anyOf": st.lists(inner, max_size=2),
            "$defs": st.dictionaries(text, inner, max_size=2),
        },
    ),
    max_leaves=6,
)

# Strings whose meaning depends on the field: draw the interesting values for those.
FIELD_STRINGS: dict[str, st.SearchStrategy[Any]] = {
    "url": image_urls,
    "image_url": image_urls,
    "data": st.one_of(st.just(PIXEL_PNG), text),
    "media_type": st.sampled_from(["image/png", "image/jpeg", "application/pdf", "text/plain", "", "x/y"]),
    "arguments": st.one_of(st.builds(json.dumps, json_objects), text),
    "model": st.sampled_from(["default", "fake-model", "fake-alias", "gpt-4o", "", "x" * 300]),
    "session_id": st.one_of(text, st.sampled_from(["s1", "s2", ".", "..", "/", "a/../../b"])),
    "previous_response_id": st.one_of(text, st.just("resp_0123")),
    "name": st.one_of(st.sampled_from(["echo", "get_weather", "python", "bad name!", ""]), text),
}
# Free-form objects that the server treats as JSON Schemas.
SCHEMA_FIELDS = {"parameters", "schema", "input_schema"}
MUTATION_RATE = 40  # in near-miss bodies, about one field in this many is wrong


class Shapes:
    """Values shaped by the msgspec JSON Schema of a wire struct.

    `near_miss=False`: well-typed values in range, so the body gets past decoding and the adapter
    and renderer behind it run. `near_miss=True`: now and then a field has a random JSON value,
    a number is just out of range, a string holds a lone surrogate, or an object loses its
    required fields. Each node is wrong only rarely, or almost no body would decode.
    """

    def __init__(self, *, near_miss: bool) -> None:
        self.near_miss = near_miss

    def struct(self, cls: type[msgspec.Struct]) -> st.SearchStrategy[Any]:
        (ref,), defs = msgspec.json.schema_components([cls])
        return self.value(ref, defs)

    def value(self, schema: dict[str, Any], defs: dict[str, Any], key: str | None = None, depth: int = 0) -> Any:
        exact = self._exact(schema, defs, key, depth)
        if not self.near_miss or depth == 0:
            return exact
        return rarely(exact, wrong_values, MUTATION_RATE)

    def _exact(self, schema: dict[str, Any], defs: dict[str, Any], key: str | None, depth: int) -> Any:
        if depth > 8:
            return scalars
        if "$ref" in schema:
            return self.value(defs[schema["$ref"].rsplit("/", 1)[1]], defs, key, depth)
        for union in ("anyOf", "oneOf"):
            if union in schema:
                return st.one_of([self.value(s, defs, key, depth + 1) for s in schema[union]])
        if "enum" in schema:
            # "user" first: hypothesis favours early choices, and most dialects insist that a
            # conversation opens with a user turn, so other roles first would stop most bodies.
            return st.sampled_from(sorted(schema["enum"], key=lambda v: v != "user"))
        if "const" in schema:
            return st.just(schema["const"])
        kind = schema.get("type")
        if kind == "object":
            return self._object(schema, defs, key, depth)
        if kind == "array":
            low = schema.get("minItems", 0)
            items = self.value(schema.get("items", {}), defs, key, depth + 1)
            return st.lists(items, min_size=low, max_size=low + 3)
        if kind == "string":
            plain = FIELD_STRINGS.get(key or "", text)
            if "pattern" in schema:
                plain = st.from_regex(schema["pattern"], fullmatch=True)
            return rarely(plain, lone_surrogates, 40) if self.near_miss else plain
        slack = 1 if self.near_miss else 0  # near misses step just outside the allowed range
        if kind == "integer":
            low = schema.get("minimum", schema.get("exclusiveMinimum", -6) + 1)
            return st.integers(low - slack, low + 64)
        if kind == "number":
            exclusive = "exclusiveMinimum" in schema
            low = schema.get("minimum", schema.get("exclusiveMinimum", -2.0))
            high = schema.get("maximum", low + 4.0)
            return st.floats(low - slack / 2, high + slack / 2, exclude_min=exclusive and not slack)
        if kind == "boolean":
            return st.booleans()
        if kind == "null":
            return st.none()
        return json_values

    def _object(self, schema: dict[str, Any], defs: dict[str, Any], key: str | None, depth: int) -> Any:
        props = schema.get("properties")
        if not props:
            return schema_like if key in SCHEMA_FIELDS else json_objects
        required = [name for name in schema.get("required", []) if name in props]
        strategies = {name: self.value(sub, defs, name, depth + 1) for name, sub in props.items()}
        whole = st.fixed_dictionaries(
            {n: strategies[n] for n in required},
            optional={n: s for n, s in strategies.items() if n not in required},
        )
        if not self.near_miss:
            return whole
        return rarely(whole, st.fixed_dictionaries({}, optional=strategies), MUTATION_RATE)


def _with_type(item: Any, kind: str) -> Any:
    if isinstance(item, dict) and kind != "message":  # message items may leave out their type
        return {"type": kind, **item}
    return item


ITEM_STRUCTS = {
    "message": MessageItem,
    "function_call": FunctionCallItem,
    "function_call_output": FunctionCallOutputItem,
    "reasoning": ReasoningItem,
}


def responses_bodies(shapes: Shapes) -> st.SearchStrategy[Any]:
    """Input items and tools are raw dicts in `ResponsesRequest`: shape them from their own structs."""
    items = st.one_of(
        [shapes.struct(cls).map(lambda item, kind=kind: _with_type(item, kind)) for kind, cls in ITEM_STRUCTS.items()]
    )
    tools = shapes.struct(FunctionTool).map(lambda t: {"type": "function", **t} if isinstance(t, dict) else t)
    if shapes.near_miss:
        items, tools = st.one_of(items, json_objects), st.one_of(tools, json_objects)

    @st.composite
    def body(draw: st.DrawFn) -> Any:
        value = draw(shapes.struct(ResponsesRequest))
        if isinstance(value, dict):
            if draw(st.booleans()):
                value["input"] = draw(st.lists(items, min_size=1, max_size=3))
            if draw(st.booleans()):
                value["tools"] = draw(st.lists(tools, max_size=2))
        return value

    return body()


def shaped(shapes: Shapes) -> dict[str, st.SearchStrategy[Any]]:
    return {
        "/v1/chat/completions": shapes.struct(ChatCompletionRequest),
        "/v1/messages": shapes.struct(CreateMessageRequest),
        "/v1/messages/count_tokens": shapes.struct(CountTokensRequest),
        "/v1/responses": responses_bodies(shapes),
    }


# The struct each route decodes its body into (`dialects.common.decode_body`), and the way that
# function words its refusals.
WIRE_STRUCTS: dict[str, type[msgspec.Struct]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/messages": CreateMessageRequest,
    "/v1/messages/count_tokens": CountTokensRequest,
    "/v1/responses": ResponsesRequest,
}
BODY_DECODING_ERRORS = ("invalid request: ", "the request body is ")
WELL_TYPED = shaped(Shapes(near_miss=False))
NEAR_MISS = shaped(Shapes(near_miss=True))
POST_PATHS = [*WELL_TYPED, "/v1/sessions/fuzz/tools/echo"]


def requests_from(bodies: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[tuple[str, Any]]:
    return st.sampled_from(list(bodies)).flatmap(lambda path: st.tuples(st.just(path), bodies[path]))


# -- 1. arbitrary bytes and JSON values -----------------------------------------------------------


@fuzz_settings(120)
@given(
    path=st.sampled_from(POST_PATHS),
    body=st.one_of(
        st.binary(max_size=256),
        st.builds(encode, wrong_values),
        st.builds(lambda v: encode(v, ascii_only=False), json_values),
    ),
)
def test_arbitrary_bytes_and_json_values(target: Target, path: str, body: bytes) -> None:
    response = target.send("POST", path, body, target.auth)
    if path != "/v1/sessions/fuzz/tools/echo":
        # Only a JSON object can be a request; anything else must be refused.
        try:
            is_object = isinstance(json.loads(body), dict)
        except ValueError:
            is_object = False
        if not is_object:
            assert response.status_code == 400, (body, response.text)


INVALID_UTF8 = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"]


@pytest.mark.parametrize("path", POST_PATHS)
@pytest.mark.parametrize("junk", INVALID_UTF8, ids=lambda b: b.hex())
def test_invalid_utf8_inside_a_json_string_is_a_400(target: Target, path: str, junk: bytes) -> None:
    if path.startswith("/v1/sessions"):
        body = b'{"text": "a' + junk + b'"}'  # the echo tool's arguments, well-formed but for the byte
    else:
        body = b'{"model": "m' + junk + b'", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}'
    response = target.send("POST", path, body, target.auth)
    assert response.status_code == 400, response.text
    assert "not valid UTF-8" in response.json()["error"]["message"], response.text


PATHOLOGICAL_JSON = {
    "deep-arrays": b"[" * 100_000 + b"]" * 100_000,
    "deep-objects": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    "unclosed-deep": b"[" * 200_000,
    "huge-number": b'{"model": "m", "max_tokens": 1' + b"0" * 5000 + b"}",
    "huge-exponent": b'{"model": "m", "temperature": 1e99999}',
    "lone-surrogate": b'{"model": "\\ud800", "messages": [{"role": "user", "content": "\\udfff"}]}',
    "nul-in-key": b'{"mo\\u0000del": "m"}',
    "duplicate-keys": b'{"model": "a", "model": 5, "messages": [], "messages": {}}',
    "many-keys": b"{" + b",".join(b'"k%d": %d' % (i, i) for i in range(20_000)) + b"}",
    "long-string": b'{"model": "' + b"x" * 2_000_000 + b'"}',
    "bom": b'\xef\xbb\xbf{"model": "m"}',
    "nan": b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
    "trailing-garbage": b'{"model": "m"} {"model": "n"}',
    "utf16": '{"model": "m"}'.encode("utf-16"),
}


@pytest.mark.parametrize("path", POST_PATHS)
@pytest.mark.parametrize("name", PATHOLOGICAL_JSON)
def test_pathological_json(target: Target, path: str, name: str) -> None:
    response = target.send("POST", path, PATHOLOGICAL_JSON[name], target.auth)
    if not path.startswith("/v1/sessions"):
        assert 400 <= response.status_code < 500


# -- 2. bodies shaped like requests: well-typed, and near misses ---------------------------------


def send_shaped(target: Target, path: str, body: Any, ascii_only: bool) -> httpx.Response:
    response = target.send("POST", path, encode(body, ascii_only=ascii_only), target.auth)
    # `--hypothesis-show-statistics` shows how many bodies got past decoding to the adapters.
    event(f"{path} {response.status_code}")
    if response.status_code >= 400:
        event(f"{path}: {str(response.json().get('error', {}).get('message'))[:60]}")
    return response


@fuzz_settings(250)
@given(request=requests_from(WELL_TYPED), ascii_only=st.booleans())
def test_well_typed_bodies(target: Target, request: tuple[str, Any], ascii_only: bool) -> None:
    path, body = request
    raw = encode(body, ascii_only=ascii_only)
    response = send_shaped(target, path, body, ascii_only)
    # Most drawn bodies decode into the route's wire struct (a few miss, e.g. a free string where
    # a union's tag is expected). Those that do must get past the server's decoding too: a
    # refusal, if any, is about meaning, never about decoding.
    try:
        msgspec.json.decode(raw, type=WIRE_STRUCTS[path])
    except msgspec.ValidationError:
        event("not well-typed after all")
        return
    if response.status_code >= 400:
        message = response.json()["error"]["message"]
        assert not message.startswith(BODY_DECODING_ERRORS), (raw[:500], response.text)


@fuzz_settings(250)
@given(request=requests_from(NEAR_MISS), ascii_only=st.booleans())
def test_near_miss_bodies(target: Target, request: tuple[str, Any], ascii_only: bool) -> None:
    path, body = request
    send_shaped(target, path, body, ascii_only)


@fuzz_settings(120)
@given(request=requests_from(WELL_TYPED), cut=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_bodies_are_refused(target: Target, request: tuple[str, Any], cut: float) -> None:
    path, body = request
    raw = encode(body)
    truncated = raw[: int(len(raw) * cut)]
    response = target.send("POST", path, truncated, target.auth)
    assert response.status_code == 400, (truncated, response.text)


# -- 3. path parameters, query strings, methods -----------------------------------------------------

path_segment = st.one_of(text, st.sampled_from(["resp_", "default", "fake-alias", "%2e%2e", "..", "a/b", "\n"]))


@fuzz_settings(150)
@given(
    template=st.sampled_from(
        [
            "/v1/models/{}",
            "/v1/responses/{}",
            "/v1/responses/{}/input_items",
            "/v1/sessions/{}",
            "/v1/sessions/{}/tools/{}",
            "/v1/{}",
            "/{}",
            "/health/{}",
        ]
    ),
    segments=st.lists(path_segment, min_size=2, max_size=2),
    method=st.sampled_from(["GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"]),
    query=st.dictionaries(st.sampled_from(["limit", "order", "after", "x", ""]), text, max_size=3),
)
def test_paths_methods_and_queries(
    target: Target, template: str, segments: list[str], method: str, query: dict[str, str]
) -> None:
    path = template.format(*(quote(s, safe="") for s in segments))
    qs = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in query.items())
    body = b'{"text": "hi"}' if method in ("POST", "PUT", "PATCH") else None
    response = target.send(method, f"{path}?{qs}" if qs else path, body, target.auth)
    if method == "HEAD":
        return
    if path.startswith("/v1/") and response.status_code == 200:
        assert response.headers["content-type"].startswith("application/json")


def test_input_items_queries_on_a_stored_response(target: Target) -> None:
    """The listing's own parameters, on a response that exists."""
    target.engine.enqueue("stored")
    created = target.send("POST", "/v1/responses", b'{"model": "m", "input": "hi"}', target.auth).json()
    listed = target.send("GET", f"/v1/responses/{created['id']}/input_items", None, target.auth).json()
    item_ids = [item["id"] for item in listed["data"]]
    assert item_ids, listed

    # Mostly numbers around the allowed range (1 to 100), the allowed orders and the stored item
    # ids, so that both answers, 200 and 400, are drawn often; sometimes any text.
    @fuzz_settings(80)
    @given(
        query=st.fixed_dictionaries(
            {},
            optional={
                "limit": rarely(st.integers(-5, 200).map(str), text, 4),
                "order": rarely(st.sampled_from(["asc", "desc", "ASC", ""]), text, 4),
                "after": rarely(st.sampled_from(item_ids), text, 4),
            },
        )
    )
    def listing(query: dict[str, str]) -> None:
        qs = "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
        response = target.send("GET", f"/v1/responses/{created['id']}/input_items?{qs}", None, target.auth)
        limit, order = query.get("limit", "20"), query.get("order", "desc")
        valid_limit = limit.isascii() and limit.isdigit() and 1 <= int(limit) <= 100
        valid = valid_limit and order in ("asc", "desc") and query.get("after", item_ids[0]) in item_ids
        assert response.status_code == (200 if valid else 400), (query, response.text)

    listing()
    # Found by the property above: str.isdigit() accepts "¹" and "①", which int() then rejects.
    for odd in ("¹", "2²", "①"):
        refused = target.send("GET", f"/v1/responses/{created['id']}/input_items?limit={quote(odd)}", None, target.auth)
        assert refused.status_code == 400, refused.text


# -- 4. headers, content types and both auth headers ----------------------------------------------

header_names = st.sampled_from(
    [
        "content-type",
        "accept",
        "content-encoding",
        "x-request-id",
        "anthropic-version",
        "user-agent",
        "x-junk",
        "origin",
    ]
)
header_values = st.one_of(
    # h11 refuses to send values with outer whitespace: that is not what is being tested here.
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(str.strip),
    st.sampled_from(
        [
            "application/json",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/json; charset=latin-1",
            "gzip",
            "br",
            "*/*",
            "text/event-stream",
        ]
    ),
)


@st.composite
def auth_headers(draw: st.DrawFn, key: str) -> tuple[dict[str, str], bool]:
    """Headers, and whether they hold a valid key in a place the server reads."""
    bogus = draw(
        st.sampled_from(["-", "sk-unsloth-" + "0" * 32, "sk-unsloth-", key[:-1], key + "x", key.upper(), "dummy"])
    )
    headers: dict[str, str] = {}
    valid = False
    bearer = draw(st.sampled_from(["none", "valid", "bogus", "basic", "lower", "no-scheme", "padded"]))
    if bearer == "valid":
        headers["Authorization"], valid = f"Bearer {key}", True
    elif bearer == "bogus":
        headers["Authorization"] = f"Bearer {bogus}"
    elif bearer == "basic":
        headers["Authorization"] = "Basic " + base64.b64encode(f"user:{key}".encode()).decode()
    elif bearer == "lower":
        headers["Authorization"], valid = f"bearer {key}", True
    elif bearer == "no-scheme":
        headers["Authorization"] = key
    elif bearer == "padded":
        headers["Authorization"], valid = f"Bearer   {key}", True
    x_api_key = draw(st.sampled_from(["none", "valid", "bogus"]))
    if x_api_key == "valid":
        headers["x-api-key"], valid = key, True
    elif x_api_key == "bogus":
        headers["x-api-key"] = bogus
    return headers, valid


@fuzz_settings(200)
@given(
    data=st.data(),
    path=st.sampled_from([*POST_PATHS, "/v1/models", "/v1/sessions", "/health", "/metrics"]),
    extra=st.dictionaries(header_names, header_values, max_size=4),
    stream=st.booleans(),
)
def test_headers_content_types_and_auth(
    target: Target, data: st.DataObject, path: str, extra: dict[str, str], stream: bool
) -> None:
    auth, valid = data.draw(auth_headers(target.server.key))
    method = "GET" if path in ("/v1/models", "/v1/sessions", "/health", "/metrics") else "POST"
    body = None
    if method == "POST":
        body = encode(
            {
                "model": "m",
                "max_tokens": 8,
                "messages": [{"role": "user", "content": "hi"}],
                "input": "hi",
                "text": "hi",
                "stream": stream,
            }
        )
    target.engine.enqueue("an answer")
    response = target.send(method, path, body, {**extra, **auth})
    if path in ("/health", "/metrics"):
        assert response.status_code == 200  # open to load balancers and scrapers
    elif valid:
        assert response.status_code != 401, response.text
    else:
        assert response.status_code == 401, response.text


# -- 5. whatever the model says, every renderer stays well-formed ----------------------------------

CLIENT_TOOL = "get_weather"
CALL_NAMES = st.sampled_from(["echo", CLIENT_TOOL, "ghost"])  # server tool, client tool, undeclared
call_arguments = st.one_of(
    st.builds(lambda t: json.dumps({"text": t}), text),
    st.builds(json.dumps, json_objects),
    st.builds(json.dumps, json_values),
    text,
)


@st.composite
def model_turn(draw: st.DrawFn) -> list[Event]:
    """One generation as the engine contract allows it: text and reasoning deltas, then tool calls
    whose argument deltas add up to their arguments, then a finish reason."""
    events: list[Event] = []
    for _ in range(draw(st.integers(0, 3))):
        piece = draw(text)
        events.append(ReasoningDelta(piece) if draw(st.booleans()) else TextDelta(piece))
    for index in range(draw(st.integers(0, 2))):
        name, arguments = draw(CALL_NAMES), draw(call_arguments)
        call_id = f"call_{index}_{draw(st.integers(0, 999))}"
        cut = draw(st.integers(0, len(arguments)))
        events.append(ToolCallStart(index, call_id, name))
        events += [ToolCallDelta(index, part) for part in (arguments[:cut], arguments[cut:]) if part]
        events.append(ToolCallEnd(index, call_id, name, arguments))
    calls = any(isinstance(e, ToolCallEnd) for e in events)
    reasons = ["tool_calls"] if calls else ["stop", "length", "stop_sequence"]
    reason = draw(st.sampled_from(reasons))
    events.append(Finished(reason, "END" if reason == "stop_sequence" else None))
    return events


WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}}


def agent_body(path: str, stream: bool, session: str) -> dict[str, Any]:
    extension = {"enable_tools": True, "enabled_tools": ["echo"], "session_id": session}
    if path == "/v1/chat/completions":
        tool = {"type": "function", "function": {"name": CLIENT_TOOL, "parameters": WEATHER}}
        messages = [{"role": "user", "content": "hi"}]
        return {"model": "m", "messages": messages, "tools": [tool], "stream": stream, **extension}
    if path == "/v1/messages":
        tool = {"name": CLIENT_TOOL, "input_schema": WEATHER}
        messages = [{"role": "user", "content": "hi"}]
        return {"model": "m", "max_tokens": 64, "messages": messages, "tools": [tool], "stream": stream, **extension}
    tool = {"type": "function", "name": CLIENT_TOOL, "parameters": WEATHER}
    return {"model": "m", "input": "hi", "tools": [tool], "stream": stream, **extension}


def client_visible_calls(path: str, response: httpx.Response, stream: bool) -> tuple[set[str], str | None]:
    """Tool names the client is asked to run, and the finish/stop reason it is given."""
    if stream:
        payloads = check_stream(path, response.text, ok=True)
        if path == "/v1/chat/completions":
            names = {
                call["function"]["name"]
                for p in payloads
                for choice in p.get("choices", [])
                for call in choice["delta"].get("tool_calls") or []
                if call.get("function", {}).get("name")
            }
            reasons = [c["finish_reason"] for p in payloads for c in p.get("choices", []) if c.get("finish_reason")]
            return names, reasons[-1] if reasons else None
        if path == "/v1/messages":
            names = {
                p["content_block"]["name"]
                for p in payloads
                if p["type"] == "content_block_start" and p["content_block"]["type"] == "tool_use"
            }
            stops = [p["delta"].get("stop_reason") for p in payloads if p["type"] == "message_delta"]
            return names, stops[-1] if stops else None
        final = payloads[-1]["response"]
        return {i["name"] for i in final["output"] if i["type"] == "function_call"}, final["status"]
    body = response.json()
    if path == "/v1/chat/completions":
        choice = body["choices"][0]
        return {c["function"]["name"] for c in choice["message"].get("tool_calls") or []}, choice["finish_reason"]
    if path == "/v1/messages":
        assert body["type"] == "message" and isinstance(body["content"], list), body
        return {b["name"] for b in body["content"] if b["type"] == "tool_use"}, body["stop_reason"]
    assert body["object"] == "response" and isinstance(body["output"], list), body
    return {i["name"] for i in body["output"] if i["type"] == "function_call"}, body["status"]


def expected_client_calls(turns: list[list[Event]]) -> set[str]:
    """The calls the client must be handed: the agent runs turns while they call only the server
    tool, and stops at the first turn that calls something else (or nothing)."""
    for turn in turns:
        called = {e.name for e in turn if isinstance(e, ToolCallEnd)}
        if called != {"echo"}:
            return called - {"echo"}
    return set()  # the FakeEngine answers "ok" once the script runs out


@fuzz_settings(150)
@given(
    path=st.sampled_from(["/v1/chat/completions", "/v1/messages", "/v1/responses"]),
    turns=st.lists(model_turn(), min_size=1, max_size=3),
    stream=st.booleans(),
    session=st.sampled_from(["s1", "s2"]),
)
def test_any_model_output_renders_well_formed(
    target: Target, path: str, turns: list[list[Event]], stream: bool, session: str
) -> None:
    target.engine.scripts.clear()
    target.engine.enqueue(*turns)
    response = target.send("POST", path, encode(agent_body(path, stream, session)), target.auth)
    assert response.status_code == 200, response.text
    names, reason = client_visible_calls(path, response, stream)
    seen = (turns, response.text[:2000])
    # A call the server ran itself is never handed to the client to execute; every other call is.
    assert "echo" not in names, seen
    assert names == expected_client_calls(turns), seen
    if path == "/v1/responses":
        assert reason in ("completed", "incomplete"), seen
    elif names:
        assert reason == ("tool_calls" if path == "/v1/chat/completions" else "tool_use"), seen
    else:
        assert reason not in ("tool_calls", "tool_use"), seen


# -- 6. body size limit ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_limit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    with fake_target(tmp_path_factory.mktemp("limit"), FakeEngine(), max_body_bytes=SMALL_BODY_LIMIT) as limited:
        yield limited


def big_chat_body(size: int) -> bytes:
    filler = "x" * size
    return encode({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": filler}]})


@pytest.mark.parametrize("path", [*WELL_TYPED, "/v1/sessions/s/tools/word_count"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_over_the_limit_is_a_413_in_the_dialects_shape(small_limit: Target, path: str, chunked: bool) -> None:
    body = big_chat_body(SMALL_BODY_LIMIT * 4)
    # A generator makes httpx send `Transfer-Encoding: chunked` with no Content-Length, so the
    # limit must hold while the body streams in, not only on the declared length.
    content: Any = iter([body[i : i + 512] for i in range(0, len(body), 512)]) if chunked else body
    started = time.monotonic()
    response = small_limit.client.post(path, content=content, headers=small_limit.auth)
    check_answer(path, response, time.monotonic() - started, small_limit.errors.take())
    assert response.status_code == 413, response.text
    if is_anthropic(path):
        assert response.json()["error"]["type"] == "request_too_large"
    small_limit.server.engine.enqueue("small is fine")
    under = small_limit.send("POST", "/v1/chat/completions", big_chat_body(100), small_limit.auth)
    assert under.status_code == 200


# -- 7. broken HTTP on the socket ------------------------------------------------------------------

RAW_REQUESTS = {
    "garbage-line": b"\x00\xff garbage\r\n\r\n",
    "no-version": b"GET /health\r\n\r\n",
    "bad-header": b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    "header-crlf-injection": b"GET /health HTTP/1.1\r\nHost: x\r\nX-Request-Id: a\rb\r\n\r\n",
    "huge-header": b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n",
    "short-body": b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"model"',
    "bad-chunk": b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n",
    "both-lengths": (
        b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "negative-length": b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
}


@pytest.mark.parametrize("name", RAW_REQUESTS)
def test_broken_http_does_not_hurt_the_server(target: Target, name: str) -> None:
    host, port = target.client.base_url.host, target.client.base_url.port
    assert host == "127.0.0.1"
    with socket.create_connection((host, port), timeout=TIME_BOUND) as sock:
        with contextlib.suppress(OSError):  # the server may close early (e.g. on a huge header)
            sock.sendall(RAW_REQUESTS[name])
            sock.shutdown(socket.SHUT_WR)  # the short body never arrives: the server must not wait
        answer = b""
        started = time.monotonic()
        while time.monotonic() - started < TIME_BOUND:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            answer += chunk
    # The connection ended (answered or closed) within the bound; no 5xx; the server still serves.
    assert time.monotonic() - started < TIME_BOUND
    assert not answer.startswith((b"HTTP/1.1 5", b"HTTP/1.0 5")), answer[:200]
    assert not target.errors.take()
    assert target.send("GET", "/health").status_code == 200


def test_requests_on_a_fuzzed_server_still_work(target: Target) -> None:
    """A control: the properties above would hold vacuously if every request failed."""
    target.engine.enqueue("fine")
    ok = target.send(
        "POST", "/v1/messages", encode(agent_body("/v1/messages", False, "ctl")), {"x-api-key": target.server.key}
    )
    assert ok.status_code == 200 and ok.json()["content"][0]["text"] == "fine"
    target.engine.enqueue("fine")
    assert target.send("POST", "/v1/responses", b'{"input": "hi"}', target.auth).json()["output_text"] == "fine"


# -- 8. the same well-typed bodies against the real engine ------------------------------------------


@pytest.mark.integration
@fuzz_settings(60)
@given(request=requests_from(WELL_TYPED))
def test_well_typed_bodies_against_the_real_engine(real_server: CliServer, real_key: str, request: Any) -> None:
    """The packaged model renders its real chat template, tokenizes, and compiles output grammars
    from whatever tools, schemas and messages arrive: none of that may turn into a 5xx."""
    path, body = request
    logged = len(real_server.log())
    if isinstance(body, dict):  # a handful of tokens: the prompt side is what is under test
        body["stream"] = False
        if path != "/v1/messages/count_tokens":
            for field in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
                body[field] = 4
    started = time.monotonic()
    response = httpx.post(
        f"{real_server.base_url}{path}", content=encode(body), headers={"x-api-key": real_key}, timeout=60
    )
    # The server runs in its own process: what it logged at ERROR is read from its log file.
    new_lines = real_server.log()[logged:]
    errors = [new_lines[-5000:]] if " ERROR " in new_lines or "Traceback" in new_lines else []
    # The real engine decodes on shared cores: a looser bound than the FakeEngine's.
    check_answer(path, response, time.monotonic() - started, errors, encode(body), bound=30.0)
    event(f"{path} {response.status_code}")
