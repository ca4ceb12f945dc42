"""Image inputs: data URIs, base64 and http(s) URLs, validated with Pillow; SSRF refused."""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image

from runtime.engine.fake import FakeEngine
from runtime.images import ImagePolicy
from runtime.ir import ImagePart
from tests.conftest import FakeServer, serve_fake


def png(size: tuple[int, int] = (4, 3), color: str = "red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


class ImageHost:
    """A local HTTP server handing out test files by path."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[str, bytes]] = {}
        files = self.files

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                content_type, body = files.get(self.path, ("text/plain", b""))
                self.send_response(200 if self.path in files else 404)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"


@pytest.fixture
def host() -> Iterator[ImageHost]:
    served = ImageHost()
    yield served
    served.server.shutdown()


@pytest.fixture
def lenient(tmp_path: Path) -> Iterator[FakeServer]:
    """A server whose operator allows images from the local network (for the local test host)."""
    policy = ImagePolicy(allow_private=True, max_bytes=100_000)
    with serve_fake(tmp_path, FakeEngine(), images=policy) as server:
        yield server


def ask(server: FakeServer, url: str) -> openai.types.chat.ChatCompletion:
    server.engine.enqueue("I see it.")
    return server.openai().chat.completions.create(
        model="m",
        messages=[
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What?"}],
            }
        ],
    )


def test_data_uri_image_is_decoded_and_validated(fake_server: FakeServer) -> None:
    data = png()
    response = ask(fake_server, "data:image/png;base64," + base64.b64encode(data).decode())
    assert response.choices[0].message.content == "I see it."
    assert fake_server.engine.requests[-1].messages[0].parts[0] == ImagePart(
        data=data, media_type="image/png", where="messages[0].content[0]"
    )


def test_text_only_model_says_the_image_was_not_seen(fake_server: FakeServer) -> None:
    fake_server.engine.enqueue("ok")
    response = httpx.post(
        f"{fake_server.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {fake_server.key}"},
        json={
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/png;base64," + base64.b64encode(png()).decode()},
                        }
                    ],
                }
            ],
        },
    )
    assert response.status_code == 200
    assert "cannot see images" in response.headers["x-toolstudio-warning"]


def test_http_image_url_is_fetched(lenient: FakeServer, host: ImageHost) -> None:
    data = png(color="blue")
    host.files["/cat.png"] = ("image/png", data)
    ask(lenient, host.url("/cat.png"))
    assert lenient.engine.requests[-1].messages[0].parts[0] == ImagePart(
        data=data, media_type="image/png", where="messages[0].content[0]"
    )


@pytest.mark.parametrize(
    ("path", "content_type", "body", "needle"),
    [
        ("/big.png", "image/png", png((400, 400)) + b"\0" * 200_000, "larger than"),
        ("/page.html", "text/html", b"<html></html>", "not an image"),
        ("/fake.png", "image/png", b"definitely not a png", "not in a known image format"),
        ("/missing.png", None, b"", "HTTP 404"),
    ],
)
def test_bad_image_urls_are_clear_400s(
    lenient: FakeServer, host: ImageHost, path: str, content_type: str | None, body: bytes, needle: str
) -> None:
    if content_type:
        host.files[path] = (content_type, body)
    with pytest.raises(openai.BadRequestError) as caught:
        ask(lenient, host.url(path))
    assert needle in str(caught.value) and "messages[0].content[0]" in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/x.png",
        "http://localhost/x.png",
        "http://10.0.0.1/x.png",
        "http://169.254.169.254/latest",
        "http://[::1]/x.png",
    ],
)
def test_private_addresses_are_refused_by_default(fake_server: FakeServer, url: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        ask(fake_server, url)
    assert "private or local address" in str(caught.value)


def test_broken_base64_is_a_400(fake_server: FakeServer) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        ask(fake_server, "data:image/png;base64,!!!notbase64")
    assert "base64" in str(caught.value)


def test_every_dialect_accepts_data_base64_and_url_images(lenient: FakeServer, host: ImageHost) -> None:
    data = png(color="green")
    b64 = base64.b64encode(data).decode()
    host.files["/pic.png"] = ("image/png", data)
    expected = ImagePart(data=data, media_type="image/png")

    lenient.engine.enqueue("ok", "ok", "ok", "ok")
    claude = lenient.anthropic()
    for source in (
        {"type": "base64", "media_type": "image/png", "data": b64},
        {"type": "url", "url": host.url("/pic.png")},
    ):
        claude.messages.create(
            model="m",
            max_tokens=10,
            messages=[
                {"role": "user", "content": [{"type": "image", "source": source}, {"type": "text", "text": "?"}]}
            ],  # type: ignore[misc,list-item]
        )
        seen = lenient.engine.requests[-1].messages[0].parts[0]
        assert isinstance(seen, ImagePart) and (seen.data, seen.media_type) == (expected.data, expected.media_type)

    client = lenient.openai()
    for url in ("data:image/png;base64," + b64, host.url("/pic.png")):
        client.responses.create(
            model="m",
            input=[
                {
                    "role": "user",
                    "content": [{"type": "input_image", "image_url": url}, {"type": "input_text", "text": "?"}],
                }
            ],  # type: ignore[list-item,typeddict-item]
        )
        seen = next(p for m in lenient.engine.requests[-1].messages for p in m.parts if isinstance(p, ImagePart))
        assert (seen.data, seen.media_type) == (expected.data, expected.media_type)


def test_private_image_urls_are_refused_in_every_dialect(fake_server: FakeServer) -> None:
    import anthropic

    with pytest.raises(anthropic.BadRequestError) as caught:
        fake_server.anthropic().messages.create(
            model="m",
            max_tokens=10,
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image", "source": {"type": "url", "url": "http://127.0.0.1/x.png"}}],
                }
            ],  # type: ignore[misc,list-item]
        )
    assert "private or local address" in str(caught.value)
    with pytest.raises(openai.BadRequestError) as refused:
        fake_server.openai().responses.create(
            model="m",
            input=[{"role": "user", "content": [{"type": "input_image", "image_url": "http://10.1.2.3/x.png"}]}],  # type: ignore[list-item,typeddict-item]
        )
    assert "private or local address" in str(refused.value)


def test_image_errors_name_the_part_as_the_client_sent_it(fake_server: FakeServer) -> None:
    """Anthropic's top-level `system` and Responses' `instructions` become IR messages of their
    own; the error must still point into the client's request, not at IR positions."""
    import anthropic

    not_an_image = base64.b64encode(b"plain text").decode()
    with pytest.raises(anthropic.BadRequestError) as caught:
        fake_server.anthropic().messages.create(
            model="m",
            max_tokens=10,
            system="You look at pictures.",
            messages=[
                {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "hi"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": not_an_image},
                        },
                    ],
                },
            ],  # type: ignore[misc,list-item]
        )
    assert "messages[2].content[1]" in str(caught.value)
    with pytest.raises(openai.BadRequestError) as refused:
        fake_server.openai().responses.create(
            model="m",
            instructions="You look at pictures.",
            input=[
                {"role": "user", "content": "hello"},
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "what is this?"},
                        {"type": "input_image", "image_url": "data:image/png;base64," + not_an_image},
                    ],
                },
            ],  # type: ignore[list-item,typeddict-item]
        )
    assert "input[1].content[1]" in str(refused.value)
