"""Image inputs: fetch http(s) URLs safely, decode and validate every image with Pillow.

The fetcher refuses private, loopback and link-local addresses (no SSRF through image URLs)
unless the operator allows them, caps the size, bounds the time, and checks the content type.
Every problem is an `InvalidRequest` naming the message part.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from PIL import Image, UnidentifiedImageError

from runtime.errors import InvalidRequest
from runtime.ir import ChatRequest, ImagePart, Message

Image.MAX_IMAGE_PIXELS = 64_000_000  # decompression bombs fail instead of eating memory


@dataclass(frozen=True, slots=True)
class ImagePolicy:
    max_bytes: int = 20 * 1024 * 1024
    timeout: float = 10.0
    allow_private: bool = False  # operator opt-in for images on the local network


def has_images(request: ChatRequest) -> bool:
    return any(isinstance(p, ImagePart) for m in request.messages for p in m.parts)


async def resolve_images(request: ChatRequest, policy: ImagePolicy) -> ChatRequest:
    """The request with every image fetched and validated (bytes + media type)."""
    if not has_images(request):
        return request
    messages: list[Message] = []
    async with httpx.AsyncClient(timeout=policy.timeout, follow_redirects=False) as client:
        for i, message in enumerate(request.messages):
            parts = list(message.parts)
            for j, part in enumerate(parts):
                if isinstance(part, ImagePart):
                    parts[j] = await _resolve(part, part.where or f"messages[{i}].content[{j}]", client, policy)
            messages.append(Message(message.role, parts))
    return dataclasses.replace(request, messages=messages)


async def _resolve(part: ImagePart, where: str, client: httpx.AsyncClient, policy: ImagePolicy) -> ImagePart:
    data = part.data if part.data is not None else await _fetch(part.url or "", where, client, policy)
    if len(data) > policy.max_bytes:
        raise InvalidRequest(f"the image at {where} is larger than {policy.max_bytes} bytes", param=where)
    media_type = await asyncio.to_thread(_validate, data, where)
    return ImagePart(data=data, media_type=media_type, where=where)


def _validate(data: bytes, where: str) -> str:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
            fmt = image.format or ""
    except UnidentifiedImageError as exc:
        raise InvalidRequest(f"the image at {where} is not in a known image format", param=where) from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidRequest(f"the image at {where} could not be decoded: {exc}", param=where) from exc
    return Image.MIME.get(fmt, "application/octet-stream")


async def _fetch(url: str, where: str, client: httpx.AsyncClient, policy: ImagePolicy) -> bytes:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"the image URL at {where} must be http(s)", param=where)
    if not policy.allow_private:
        await _refuse_private(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), where)
    try:
        async with client.stream("GET", url) as response:
            if response.status_code != 200:
                raise InvalidRequest(f"fetching the image at {where} gave HTTP {response.status_code}", param=where)
            content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if not content_type.startswith("image/"):
                raise InvalidRequest(
                    f"the URL at {where} is not an image (content-type {content_type or 'missing'})", param=where
                )
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > policy.max_bytes:
                    raise InvalidRequest(f"the image at {where} is larger than {policy.max_bytes} bytes", param=where)
                chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise InvalidRequest(f"the image at {where} could not be fetched: {type(exc).__name__}", param=where) from exc
    return b"".join(chunks)


async def _refuse_private(host: str, port: int, where: str) -> None:
    # Checked on the resolved addresses (a public name may point at 127.0.0.1). A DNS answer
    # that changes between this check and the fetch is not covered (rebinding); the operator
    # who needs more puts images behind a proxy.
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise InvalidRequest(f"the image host at {where} does not resolve", param=where) from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise InvalidRequest(
                f"the image URL at {where} points at a private or local address; the server refuses those",
                param=where,
            )
