"""A session's workspace files over HTTP (OpenAI-style bodies and errors), for the web page
and any other client:

GET /v1/sessions/{id}/files          `{"object": "list", "session_id", "data": [{"path",
                                     "size_bytes", "modified"}], "truncated": bool}`: the
                                     regular files, sorted by path (`modified`: unix seconds)
GET /v1/sessions/{id}/files/{path}   the file's bytes, as an attachment

Both 404 for a session this key does not have. A closed session (idle, evicted, from before a
restart) is opened again, as its next tool call would: its files come back with it.

The workspace is written by sandboxed code, so nothing in it is trusted: paths are walked one
component at a time from a directory descriptor with `O_NOFOLLOW` (a symlink, `..`, or a
directory swapped for a link mid-request can never lead outside it, whatever the server's
uid may read), only regular files are served (a FIFO would block), and downloads carry
`Content-Disposition: attachment` with a sandboxing CSP so HTML written by a tool never runs
on the page's origin.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import mimetypes
import os
import stat
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from litestar import Request, get
from litestar.params import FromPath
from litestar.response import Stream

from runtime.errors import InvalidRequest, NotFound
from runtime.http import api_key_of, runtime_of

MAX_LISTED = 2000  # files in one listing; `truncated` says when there were more
MAX_SCANNED = 20000  # directory entries looked at, files or not: bounds the time a listing takes
CHUNK = 256 * 1024
HIDDEN_TOP = {"lost+found"}  # the session disk image's own directory, not the session's


def _exists(request: Request[Any, Any, Any], session_id: str) -> bool:
    runtime = runtime_of(request)
    # A named session's workspace directory exists while it lives and while its files are kept.
    return runtime.sessions.workspace_for(str(api_key_of(request).id), session_id).is_dir()


def _list(workspace: Path) -> tuple[list[dict[str, Any]], bool]:
    """Regular files under `workspace` (symlinks neither listed nor followed)."""
    files: list[dict[str, Any]] = []
    scanned = 0
    truncated = False
    for directory, dirs, names, dir_fd in os.fwalk(workspace, follow_symlinks=False):
        relative = Path(directory).relative_to(workspace)
        if relative == Path("."):
            dirs[:] = [d for d in dirs if d not in HIDDEN_TOP]
        dirs.sort()
        for name in sorted(names):
            scanned += 1
            if len(files) >= MAX_LISTED or scanned > MAX_SCANNED:
                truncated = True
                break
            try:
                info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except OSError:
                continue  # removed meanwhile
            if stat.S_ISREG(info.st_mode):
                path = (relative / name).as_posix()
                files.append({"path": path, "size_bytes": info.st_size, "modified": int(info.st_mtime)})
        if truncated:
            break
    return sorted(files, key=lambda f: f["path"]), truncated


def _parts(file_path: str) -> list[str]:
    parts = file_path.strip("/").split("/")
    if not parts or any(p in ("", ".", "..") or "\0" in p for p in parts):
        raise InvalidRequest("a file path is relative to the workspace, without '.', '..' or empty parts")
    return parts


def open_in(workspace: Path, parts: list[str]) -> int:
    """A read-only descriptor of the regular file `parts` under `workspace`, never following a
    symlink on the way; NotFound for anything else."""
    shown = "/".join(parts)
    fd = os.open(workspace, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = inner
        file_fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=fd)
    except OSError as exc:
        # ENAMETOOLONG: a part longer than any name the workspace can hold names nothing in it.
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EACCES, errno.ENAMETOOLONG):
            raise NotFound(f"no file {shown!r} in this session's workspace") from exc
        raise
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(file_fd).st_mode):
        os.close(file_fd)
        raise NotFound(f"{shown!r} is not a regular file")
    return file_fd


@get("/v1/sessions/{session_id:str}/files")
async def list_session_files(request: Request[Any, Any, Any], session_id: FromPath[str]) -> dict[str, Any]:
    if not _exists(request, session_id):
        raise NotFound(f"no session {session_id!r}")
    runtime = runtime_of(request)
    async with runtime.open_session(api_key_of(request), session_id) as session:
        files, truncated = await asyncio.to_thread(_list, session.workspace)
    return {"object": "list", "session_id": session_id, "data": files, "truncated": truncated}


@get("/v1/sessions/{session_id:str}/files/{file_path:path}")
async def download_session_file(
    request: Request[Any, Any, Any], session_id: FromPath[str], file_path: FromPath[str]
) -> Stream:
    parts = _parts(file_path)
    if not _exists(request, session_id):
        raise NotFound(f"no session {session_id!r}")
    runtime = runtime_of(request)
    # The session stays open (its disk mounted) until the last byte is sent.
    hold = contextlib.AsyncExitStack()
    session = await hold.enter_async_context(runtime.open_session(api_key_of(request), session_id))
    try:
        fd = await asyncio.to_thread(open_in, session.workspace, parts)
    except BaseException:
        await hold.aclose()
        raise

    async def chunks() -> AsyncIterator[bytes]:
        try:
            while chunk := await asyncio.to_thread(os.read, fd, CHUNK):
                yield chunk
        finally:
            os.close(fd)
            await hold.aclose()

    name = parts[-1]
    media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    headers = {
        "Content-Disposition": f"attachment; filename*=UTF-8''{urllib.parse.quote(name)}",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox",
    }
    return Stream(chunks(), media_type=media_type, headers=headers)


route_handlers = [list_session_files, download_session_file]
