"""Run one cell on a kernel and fold its iopub messages into what the model reads."""

from __future__ import annotations

import base64
import logging
import queue
import re
import time
from dataclasses import dataclass, field
from typing import Any

from runtime.sandbox import OutputBuffer
from runtime.tools import Attachment

log = logging.getLogger(__name__)

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
# Display data kept as attachments, in order of preference when one bundle offers several
# (matplotlib's inline backend sends PNG; `figure_formats = ["svg"]` sends SVG).
IMAGE_TYPES = ("image/png", "image/jpeg", "image/svg+xml")
HTML_TYPE = "text/html"  # a DataFrame's table, or IPython.display.HTML
MAX_ATTACHMENTS = 8  # per cell; later ones are named in the output but not attached
MAX_ATTACHMENT_BYTES = 8 * 1024 * 1024  # per attachment, decoded
OUTPUT_CAP_BYTES = 64 * 1024
_POLL = 0.5  # how often a silent cell is checked for a dead kernel


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


@dataclass
class Execution:
    """What one cell produced, plus what went wrong around it."""

    timeout: float
    output: OutputBuffer = field(default_factory=lambda: OutputBuffer(OUTPUT_CAP_BYTES))
    attachments: list[Attachment] = field(default_factory=list)
    error_name: str | None = None  # the exception the code raised, if any
    timed_out: bool = False  # interrupted at the timeout; the kernel's state is kept
    kernel_died: bool = False
    stuck: bool = False  # ignored the interrupt, so it was killed
    notes: list[str] = field(default_factory=list)  # said to the model after the output
    _last: str = ""  # the channel written last ("stdout", "stderr", "other")
    _ends_with_newline: bool = True

    def write(self, channel: str, text: str) -> None:
        if not text:
            return
        if channel != self._last and (channel == "stderr" or self._last == "stderr"):
            self._raw("" if self._ends_with_newline else "\n")
            self._raw("[stderr]\n" if channel == "stderr" else "[stdout]\n")
        elif channel == "other" and not self._ends_with_newline:
            self._raw("\n")
        self._raw(text)
        self._last = channel

    def _raw(self, text: str) -> None:
        if text:
            self.output.write(text.encode("utf-8", errors="replace"))
            self._ends_with_newline = text.endswith("\n")

    @property
    def failed(self) -> bool:
        """The cell did not complete: it raised, timed out, or took the kernel down."""
        return self.error_name is not None or self.timed_out or self.kernel_died or self.stuck

    def text(self) -> str:
        body = self.output.text().rstrip("\n")
        notes = list(self.notes)
        if self.timed_out:
            kept = "" if self.stuck else "; the kernel and its variables are kept"
            notes.insert(0, f"Execution timed out after {self.timeout:g} s and was interrupted{kept}.")
        parts = [body] if body else []
        parts += [f"[{note}]" for note in notes]
        return "\n".join(parts) if parts else "(no output)"

    def add_data(self, data: dict[str, Any]) -> None:
        """An execute_result or display_data bundle (`{media type: payload}`).

        An image (PNG, JPEG, SVG) becomes an attachment and a line `[image/png image N attached]`
        in the output; otherwise the `text/plain` repr goes to the output, and `text/html`
        (a DataFrame's table) becomes an attachment next to it, unannounced. Jupyter sends
        binary types base64 (possibly wrapped) and text types as strings; every attachment's
        `data` is base64 of the payload's bytes.
        """
        for media_type in IMAGE_TYPES:
            if media_type in data:
                if self.attach(media_type, data[media_type]):
                    self.write("other", f"[{media_type} image {len(self.attachments)} attached]\n")
                return
        text = data.get("text/plain")
        if text:
            self.write("other", strip_ansi(str(text)) + "\n")
        if HTML_TYPE in data:
            self.attach(HTML_TYPE, data[HTML_TYPE])

    def attach(self, media_type: str, payload: Any) -> bool:
        """Keep one display payload as an attachment; False (with a note) when over a cap."""
        if len(self.attachments) >= MAX_ATTACHMENTS:
            self.notes.append(f"A {media_type} output was not attached: at most {MAX_ATTACHMENTS} per call.")
            return False
        if media_type.startswith("image/") and media_type != "image/svg+xml":
            encoded = "".join(str(payload).split())  # already base64, maybe wrapped
            size = len(encoded) * 3 // 4
        else:
            raw = str(payload).encode("utf-8", errors="replace")
            encoded, size = base64.b64encode(raw).decode("ascii"), len(raw)
        if size > MAX_ATTACHMENT_BYTES:
            limit = MAX_ATTACHMENT_BYTES // (1024 * 1024)
            self.notes.append(f"A {media_type} output of {size} bytes was not attached: the limit is {limit} MiB.")
            return False
        self.attachments.append(Attachment(media_type=media_type, data=encoded))
        return True


async def collect(km: Any, kc: Any, code: str, timeout: float, grace: float) -> Execution:
    """Execute `code` and gather its output until the kernel reports idle for it."""
    result = Execution(timeout=timeout)
    msg_id = kc.execute(code, store_history=True, allow_stdin=False, stop_on_error=False)
    deadline = time.monotonic() + timeout
    interrupted_at: float | None = None
    while True:
        now = time.monotonic()
        if interrupted_at is None and now >= deadline:
            log.debug("cell timed out after %.1f s; interrupting", timeout)
            await km.interrupt_kernel()
            interrupted_at, result.timed_out = now, True
        limit = interrupted_at + grace if interrupted_at is not None else deadline
        try:
            msg = await kc.get_iopub_msg(timeout=max(0.01, min(_POLL, limit - now)))
        except queue.Empty:
            if not await km.is_alive():
                result.kernel_died = True
                return result
            if interrupted_at is not None and time.monotonic() >= interrupted_at + grace:
                result.stuck = True
                return result
            continue
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "status" and content.get("execution_state") == "idle":
            break
        if kind == "stream":
            result.write(content.get("name", "stdout"), content.get("text", ""))
        elif kind in ("execute_result", "display_data"):
            result.add_data(content.get("data", {}))
        elif kind == "error":
            if result.timed_out and content.get("ename") == "KeyboardInterrupt":
                continue  # our own interrupt: the timeout note says it better
            result.error_name = content.get("ename")
            traceback = "\n".join(content.get("traceback", [])) or f"{content.get('ename')}: {content.get('evalue')}"
            result.write("other", strip_ansi(traceback) + "\n")
    await _drain_reply(kc, msg_id)
    return result


async def _drain_reply(kc: Any, msg_id: str) -> None:
    # The execute_reply arrives on the shell channel; leaving it queued would only grow memory.
    end = time.monotonic() + 2.0
    while time.monotonic() < end:
        try:
            reply = await kc.get_shell_msg(timeout=max(0.01, end - time.monotonic()))
        except queue.Empty:
            return
        if reply.get("parent_header", {}).get("msg_id") == msg_id:
            return
