"""The web page: a static single-page client of the public API, served on the API's own port.

`GET /` is `static/index.html`; `GET /ui/...` its scripts, styles and the third-party assets
that `make webui` fetches from the npm registry into `static/vendor/` (marked, DOMPurify,
highlight.js; git-ignored). None of it needs a key: the page asks for one and sends it with
every API call it makes, like any other client. Without `static/vendor/` the page still works,
showing replies as plain text.

Every response carries a Content-Security-Policy that confines the page to its own origin
(scripts, styles, fetches, images except `data:`/`blob:`): text a model writes, rendered as
Markdown, can never load anything from elsewhere.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

from litestar import Response, get
from litestar.file_system import BaseLocalFileSystem
from litestar.response import File
from litestar.router import Router
from litestar.static_files import create_static_files_router

STATIC_DIR = Path(__file__).parent / "static"
VENDOR_DIR = STATIC_DIR / "vendor"

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate: a new version of the page is seen at once
}


def _secure(response: Response[Any]) -> Response[Any]:
    response.headers.update(SECURITY_HEADERS)
    return response


@get("/", include_in_schema=False)
async def index() -> File:
    """The page itself (no key needed to load it)."""
    return File(STATIC_DIR / "index.html", media_type="text/html", content_disposition_type="inline")


class _StaticFiles(BaseLocalFileSystem):
    """The local file system, where a name longer than it allows (ENAMETOOLONG) is a missing
    file, so a 404: Litestar answers 500 to any error but FileNotFoundError."""

    async def info(self, path: Any, **kwargs: Any) -> Any:
        try:
            return await super().info(path, **kwargs)
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                raise FileNotFoundError(errno.ENOENT, "no such file", str(path)) from exc
            raise


def route_handlers() -> list[Any]:
    """`GET /` and the static router for `/ui/*`; neither is behind the API-key guard."""
    static = create_static_files_router(
        path="/ui", directories=[STATIC_DIR], name="webui", after_request=_secure, file_system=_StaticFiles()
    )
    return [Router(path="/", route_handlers=[index], after_request=_secure), static]
