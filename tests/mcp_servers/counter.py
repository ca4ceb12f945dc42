"""A stdio MCP server for the tests: a stateful counter (per instance), an image, a structured
result, a tool error, a crash mid-call, a call that never answers, and probes of the sandbox
(writing files, opening connections).

Run as `python counter.py`; it speaks MCP on stdin/stdout. Each process has an `instance` id,
so a test can tell one instance (per session, or shared) from another.
"""

from __future__ import annotations

import asyncio
import io
import os
import socket
import sys
import uuid

from mcp.server.fastmcp import FastMCP, Image
from mcp.server.fastmcp.exceptions import ToolError
from pydantic import BaseModel

server = FastMCP("counter")
INSTANCE = uuid.uuid4().hex[:12]
count = 0


class Measurement(BaseModel):
    value: float
    unit: str


@server.tool()
def increment(by: int = 1) -> str:
    """Add `by` to this server's counter and return the new count and the instance id."""
    global count
    count += by
    return f"count={count} instance={INSTANCE}"


@server.tool()
def image(colour: str = "red") -> Image:
    """Return an 8x8 PNG of one colour (red, green or blue)."""
    from PIL import Image as Picture

    buffer = io.BytesIO()
    Picture.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return Image(data=buffer.getvalue(), format="png")


@server.tool()
def measure() -> Measurement:
    """A structured result (structuredContent with an output schema)."""
    return Measurement(value=21.5, unit="celsius")


@server.tool()
def fail(message: str) -> str:
    """Always fails with `message` (an isError result)."""
    raise ToolError(message)


@server.tool()
def crash() -> str:
    """The process exits with code 3 in the middle of the call."""
    print("counter: crashing on purpose", file=sys.stderr, flush=True)
    os._exit(3)


@server.tool()
async def hang() -> str:
    """Never answers (the server itself stays responsive)."""
    await asyncio.sleep(3600)
    return "unreachable"


@server.tool()
def write_file(path: str, text: str) -> str:
    """Try to write `text` to `path`; says what happened."""
    try:
        with open(path, "w") as file:
            file.write(text)
    except OSError as exc:
        return f"error: {type(exc).__name__}: {exc}"
    return f"wrote {os.path.abspath(path)}"


@server.tool()
def read_file(path: str) -> str:
    """Return the text of `path`, or what went wrong."""
    try:
        with open(path) as file:
            return file.read()
    except OSError as exc:
        return f"error: {type(exc).__name__}: {exc}"


@server.tool()
def connect(host: str, port: int) -> str:
    """Try a TCP connection to host:port within 3 s; says what happened."""
    try:
        with socket.create_connection((host, port), timeout=3):
            return "connected"
    except OSError as exc:
        return f"error: {type(exc).__name__}: {exc}"


@server.tool()
def whereami() -> str:
    """The working directory, HOME and uid of the server."""
    return f"cwd={os.getcwd()} home={os.environ.get('HOME')} uid={os.getuid()} instance={INSTANCE}"


if __name__ == "__main__":
    server.run("stdio")
