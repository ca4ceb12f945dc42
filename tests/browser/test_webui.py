"""The web page in real headless Chromium against the real server (`toolstudio run` with the
packaged SmolLM2-135M): signing in, a streamed answer, a live python run with its plot, Stop
ending the decoding on the server, Settings → API keys (made on the page, used and refused
through the `openai` SDK), a non-admin key, images, sessions and their files, and a page that
never leaves its origin. Screenshots: see tests/browser/conftest.py.

The 135M model cannot be relied on to write plotting code, so the python test prepares its
session first (as tests/integration/test_tool_figures.py does): an IPython input transformer
runs a fixed plotting cell in place of whatever the model's forced call holds. The call, the
sandboxed kernel, matplotlib, the SSE events and the page are all the real path.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from PIL import Image
from playwright.sync_api import expect

from tests.browser.conftest import Page
from tests.servers import CliServer, session_tool, toolstudio

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not shutil.which("chromium"), reason="Debian's chromium is not installed"),
]


def png(colour: str, size: tuple[int, int] = (40, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


def health(server: CliServer) -> dict[str, Any]:
    return httpx.get(f"{server.base_url}/health", timeout=10).json()  # type: ignore[no-any-return]


def send(web: Page, text: str) -> None:
    """Type a message and send it with the keyboard (Enter)."""
    web.page.fill("#prompt", text)
    web.page.press("#prompt", "Enter")


def last_reply(web: Page) -> Any:
    return web.page.locator(".message.assistant").last


def wait_reply(web: Page) -> Any:
    """The last reply, once its stream has ended (its footer no longer says it is generating)."""
    reply = last_reply(web)
    expect(reply.locator(".meta")).not_to_contain_text("generating", timeout=240_000)
    return reply


def set_option(web: Page, selector: str, value: str) -> None:
    web.page.fill(selector, value)
    web.page.dispatch_event(selector, "change")


def test_a_missing_asset_is_a_404_whatever_its_name(real_server: CliServer) -> None:
    # A name longer than the filesystem allows (ENAMETOOLONG) was a 500 from Litestar's router.
    for name in ("missing.js", "x" * 300, "js/" + "é" * 200 + ".js"):
        response = httpx.get(f"{real_server.base_url}/ui/{name}", timeout=30)
        assert response.status_code == 404, (name[:20], response.status_code, response.text[:200])
    assert httpx.get(f"{real_server.base_url}/ui/app.css", timeout=30).status_code == 200


# -- signing in ---------------------------------------------------------------------------------


def test_sign_in_with_the_key_printed_at_first_start(web: Page, admin_key: str) -> None:
    web.open()
    expect(web.page.locator("#login-view")).to_be_visible()
    expect(web.page.locator("#tabs")).to_be_hidden()
    web.page.fill("#login-key", "sk-unsloth-" + "0" * 32)
    web.page.click("#login-form button[type=submit]")
    expect(web.page.locator("#login-error")).not_to_be_empty()
    web.shot("refused")

    web.page.fill("#login-key", admin_key)
    web.page.click("#login-form button[type=submit]")
    expect(web.page.locator("#chat-view")).to_be_visible()
    expect(web.page.locator("#whoami")).to_have_text("default (admin)")
    expect(web.page.locator("#model")).to_have_value(re.compile("SmolLM2"))
    # The key stays in this browser: a reload needs no sign-in.
    web.page.reload()
    web.page.wait_for_selector("html[data-ready=true]")
    expect(web.page.locator("#chat-view")).to_be_visible()


def test_light_and_dark_follow_the_system_setting(web: Page, admin_key: str) -> None:
    background = "getComputedStyle(document.body).backgroundColor"
    web.page.emulate_media(color_scheme="light")
    web.open(admin_key)
    light = web.page.evaluate(background)
    web.page.emulate_media(color_scheme="dark")
    dark = web.page.evaluate(background)
    assert light != dark
    brightness = lambda css: sum(int(c) for c in re.findall(r"\d+", css)[:3])  # noqa: E731
    assert brightness(dark) < brightness(light)
    web.shot("dark")


# -- chat -----------------------------------------------------------------------------------------

WATCH_STREAM = """() => {
  window.seen = [];
  new MutationObserver(() => {
    const reply = [...document.querySelectorAll('.message.assistant')].pop();
    if (reply && reply.querySelector('.meta').textContent.includes('generating')) {
      window.seen.push((reply.querySelector('.answer') || {textContent: ''}).textContent.length);
    }
  }).observe(document.querySelector('#messages'), {subtree: true, childList: true, characterData: true});
}"""


def test_a_message_streams_its_answer_as_it_is_generated(web: Page, admin_key: str) -> None:
    web.open(admin_key)
    web.page.click("#new-chat")
    set_option(web, "#max-tokens", "40")
    web.page.evaluate(WATCH_STREAM)
    send(web, "What is the capital of France?")
    reply = wait_reply(web)
    answer = reply.locator(".answer").inner_text()
    assert answer.strip()
    partial = {n for n in web.page.evaluate("window.seen") if n > 0}
    assert len(partial) >= 2, f"the answer appeared at once, not streamed: {partial}"
    expect(reply.locator(".meta")).to_contain_text("completion tokens")
    expect(web.page.locator("#context-use")).to_contain_text(re.compile(r"context \d+ / \d+ tokens"))
    web.shot("answer")

    # Kept in the browser, exportable as JSON.
    with web.page.expect_download() as download:
        web.page.click("#export-chats")
    exported = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
    texts = [m.get("content") for c in exported["conversations"] for m in c["messages"] if m["role"] == "user"]
    assert "What is the capital of France?" in texts


PLOT_CELL = """
import matplotlib.pyplot as plt
import numpy as np

def draw():
    x = np.linspace(0, 4 * np.pi, 200)
    figure, axes = plt.subplots(figsize=(4, 2.5))
    axes.plot(x, np.sin(x), label="sin")
    axes.plot(x, np.cos(x), label="cos")
    axes.legend()
    axes.set_title("drawn in the session's kernel")

get_ipython().input_transformers_post.append(
    lambda lines: ["print('plotted by the kernel')\\n", "draw()\\n"]
)
"""

WATCH_ORDER = """() => {
  window.order = [];
  new MutationObserver(() => {
    const reply = [...document.querySelectorAll('.message.assistant')].pop();
    if (!reply) return;
    if (reply.querySelector('.tool-attachments img') && !window.order.includes('plot')) window.order.push('plot');
    const after = reply.querySelector('.tool-run ~ .answer');
    if (after && after.textContent.trim() && !window.order.includes('answer')) window.order.push('answer');
  }).observe(document.querySelector('#messages'), {subtree: true, childList: true, characterData: true});
}"""


@pytest.mark.sandbox
@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")
def test_a_python_run_shows_code_output_and_plot_before_the_answer(
    web: Page, admin_key: str, real_server: CliServer
) -> None:
    session = "browser-plot"
    prepared = session_tool(real_server.base_url, admin_key, session, "python", {"code": PLOT_CELL}, timeout=180)
    if "ModuleNotFoundError" in prepared["output"]:
        pytest.skip("the kernel's interpreter has no matplotlib (the tool environment provides it)")
    assert not prepared["is_error"], prepared

    web.open(admin_key)
    web.page.click("#new-chat")
    web.page.check("#tool-toggles input[value=python]")
    web.page.select_option("#tool-choice", "tool:python")
    set_option(web, "#max-tool-calls", "1")
    set_option(web, "#max-tokens", "40")
    set_option(web, "#session-id", session)
    web.page.evaluate(WATCH_ORDER)
    send(web, "Draw a plot of the data with Python.")
    run = last_reply(web).locator(".tool-run").first
    expect(run.locator(".tool-name")).to_have_text("python")
    reply = wait_reply(web)

    expect(run.locator(".tool-state")).to_have_text("ok")
    assert run.locator(".tool-args code").inner_text().strip(), "the call's code is not shown"
    expect(run.locator(".tool-output")).to_contain_text("plotted by the kernel")
    expect(run.locator(".tool-duration")).to_have_text(re.compile(r"^\d+\.\d\d s$"))
    plot = run.locator(".tool-attachments img")
    expect(plot).to_have_count(1)
    assert plot.get_attribute("src").startswith("data:image/png;base64,")
    assert plot.evaluate("img => img.complete && img.naturalWidth") > 100  # a decoded figure
    # The run (its plot) came before the answer, live and in the page's order.
    assert web.page.evaluate("window.order") == ["plot", "answer"]
    assert reply.locator(".tool-run ~ .answer").inner_text().strip()
    web.shot("python-run")


def test_stop_ends_the_generation_on_the_server(web: Page, admin_key: str, real_server: CliServer) -> None:
    web.open(admin_key)
    web.page.click("#new-chat")
    set_option(web, "#max-tokens", "3000")
    send(web, "Count from 1 to 1000, one number per line.")
    web.page.wait_for_function(
        "() => ([...document.querySelectorAll('.message.assistant .answer')].pop() || {textContent: ''})"
        ".textContent.length > 20"
    )
    assert health(real_server)["active"] == 1, "nothing was decoding"
    web.shot("generating")
    stopped_at = time.monotonic()
    web.page.click("#stop")
    while health(real_server)["active"] != 0:
        assert time.monotonic() - stopped_at < 15, "the server kept decoding after Stop"
        time.sleep(0.05)
    print(f"decoding stopped {time.monotonic() - stopped_at:.2f} s after Stop")
    reply = last_reply(web)
    expect(reply.locator(".meta")).to_contain_text("stopped")
    expect(web.page.locator("#stop")).to_be_hidden()
    assert "completion tokens" not in reply.locator(".meta").inner_text()  # it never finished
    shown = reply.locator(".answer").inner_text()
    time.sleep(1)
    assert reply.locator(".answer").inner_text() == shown


def test_images_attach_by_upload_and_by_paste(web: Page, admin_key: str, tmp_path: Any) -> None:
    red, blue = png("red"), png("blue")
    (tmp_path / "red.png").write_bytes(red)
    web.open(admin_key)
    web.page.click("#new-chat")
    set_option(web, "#max-tokens", "16")
    web.page.set_input_files("#attach", str(tmp_path / "red.png"))
    expect(web.page.locator("#pending-images img")).to_have_count(1)
    web.page.focus("#prompt")
    web.page.evaluate(
        """(b64) => {
          const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
          const data = new DataTransfer();
          data.items.add(new File([bytes], 'pasted.png', {type: 'image/png'}));
          document.querySelector('#prompt').dispatchEvent(new ClipboardEvent('paste', {clipboardData: data, bubbles: true}));
        }""",
        base64.b64encode(blue).decode(),
    )
    expect(web.page.locator("#pending-images img")).to_have_count(2)
    web.shot("attached")
    with web.page.expect_request("**/v1/chat/completions") as sent:
        send(web, "What is in these pictures?")
    content = json.loads(sent.value.post_data)["messages"][-1]["content"]
    urls = [part["image_url"]["url"] for part in content if part["type"] == "image_url"]
    assert [base64.b64decode(u.split(",", 1)[1]) for u in urls] == [red, blue]
    assert {"type": "text", "text": "What is in these pictures?"} in content
    reply = wait_reply(web)
    expect(web.page.locator(".message.user").last.locator(".images img")).to_have_count(2)
    expect(web.page.locator("#pending-images img")).to_have_count(0)
    # The packaged model has no projector: the server's warning header reaches the page.
    expect(reply.locator(".meta .server-warning")).not_to_be_empty()


# -- sessions -------------------------------------------------------------------------------------


@pytest.mark.sandbox
@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")
def test_sessions_list_browse_download_and_delete(web: Page, admin_key: str, real_server: CliServer) -> None:
    session = "browser-files"
    command = "mkdir -p out && printf 'quarterly numbers\\n' > out/report.txt && ln -sf /etc/passwd link"
    session_tool(real_server.base_url, admin_key, session, "bash", {"command": command}, timeout=180)
    web.open(admin_key)
    web.page.click("[data-view=sessions]")
    row = web.page.locator(f"#session-table tr[data-session='{session}']")
    expect(row).to_contain_text("live")
    row.get_by_role("button", name="Files").click()
    files = web.page.locator("#file-table tbody tr")
    expect(files).to_have_count(1)  # the symlink is not offered
    expect(files.first).to_contain_text("out/report.txt")
    web.shot("files")
    with web.page.expect_download() as download:
        files.first.get_by_role("button", name="Download").click()
    assert download.value.suggested_filename == "report.txt"
    assert Path(download.value.path()).read_bytes() == b"quarterly numbers\n"

    row.get_by_role("button", name="Use in chat").click()
    expect(web.page.locator("#chat-view")).to_be_visible()
    expect(web.page.locator("#session-id")).to_have_value(session)

    web.page.click("[data-view=sessions]")
    web.page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Delete").click()
    expect(row).to_have_count(0)
    gone = httpx.get(
        f"{real_server.base_url}/v1/sessions/{session}/files", headers={"x-api-key": admin_key}, timeout=30
    )
    assert gone.status_code == 404


# -- Settings → API -------------------------------------------------------------------------------


def test_settings_creates_a_key_the_sdk_uses_until_it_is_revoked(
    web: Page, admin_key: str, real_server: CliServer
) -> None:
    web.open(admin_key)
    web.page.click("[data-view=settings]")
    expect(web.page.locator("#openai-base")).to_have_text(f"{real_server.base_url}/v1")
    expect(web.page.locator("#key-table tr[data-key-name=default]")).to_contain_text("admin")
    web.page.fill("#new-key-name", "made-in-the-browser")
    web.page.click("#create-key button[type=submit]")
    expect(web.page.locator("#new-key")).to_be_visible()
    key = web.page.locator("#new-key-value").inner_text()
    assert re.fullmatch(r"sk-unsloth-[0-9a-f]{32}", key)
    expect(web.page.locator("#snippet-openai")).to_contain_text(key)
    expect(web.page.locator("#snippet-anthropic")).to_contain_text(key)
    web.page.click("#new-key button.copy")
    assert web.page.evaluate("navigator.clipboard.readText()") == key
    row = web.page.locator("#key-table tr[data-key-name=made-in-the-browser]")
    expect(row).to_contain_text("active")
    web.shot("new-key")

    client = openai.OpenAI(base_url=f"{real_server.base_url}/v1", api_key=key, max_retries=0, timeout=120)
    assert [m.id for m in client.models.list().data]
    reply = client.chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert reply.choices[0].finish_reason in ("stop", "length")

    web.page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Revoke").click()
    expect(row).to_contain_text("revoked")
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    # The page never shows the secret again.
    web.page.reload()
    web.page.wait_for_selector("html[data-ready=true]")
    assert key not in web.page.content()


def test_a_non_admin_key_cannot_see_the_keys_page(web: Page, real_server: CliServer) -> None:
    viewer = toolstudio("keys", "create", "--name", "browser-viewer", data_dir=real_server.data_dir).strip()
    web.open(viewer)
    expect(web.page.locator("#whoami")).to_have_text("browser-viewer")
    web.page.click("[data-view=settings]")
    expect(web.page.locator("#keys-denied")).to_be_visible()
    expect(web.page.locator("#keys-admin")).to_be_hidden()
    expect(web.page.locator("#key-table tbody tr")).to_have_count(0)
    status = web.page.evaluate(
        "fetch('/v1/keys', {headers: {Authorization: 'Bearer ' + localStorage.getItem('toolstudio.key')}})"
        ".then((r) => r.status)"
    )
    assert status == 403
    web.shot("denied")


# -- the page's own safety ----------------------------------------------------------------------

HOSTILE = (
    "Look: ![remote](http://203.0.113.9/pixel.png) and "
    '<img src="http://203.0.113.9/raw.png" onerror="window.pwned = 1"> and '
    "[a link](http://203.0.113.9/page)\n\n```python\nprint('highlighted')\n```\n"
)
STORED = {
    "id": "c-stored",
    "title": "stored",
    "created": 1,
    "session_id": "chat-stored",
    "messages": [
        {"role": "user", "content": "show me", "images": []},
        {
            "role": "assistant",
            "parts": [
                {
                    "type": "tool",
                    "call_id": "call_1",
                    "name": "python",
                    "arguments": json.dumps({"code": "1 / 0"}),
                    "output": "ZeroDivisionError: division by zero",
                    "is_error": True,
                    "attachments": [],
                    "duration_ms": 12,
                },
                {"type": "text", "text": HOSTILE},
            ],
        },
    ],
}


def store_conversation(web: Page) -> None:
    web.page.evaluate(
        """(c) => {
          localStorage.setItem('toolstudio.conversations', JSON.stringify([c]));
          localStorage.setItem('toolstudio.current', c.id);
        }""",
        STORED,
    )
    web.page.reload()
    web.page.wait_for_selector("html[data-ready=true]")


def test_text_from_a_model_cannot_make_the_page_leave_its_origin(web: Page, admin_key: str) -> None:
    web.open(admin_key)
    store_conversation(web)
    answer = web.page.locator(".message.assistant .answer")
    expect(answer.locator("code.hljs")).to_contain_text("highlighted")  # Markdown and highlighting are on
    expect(answer.locator("img")).to_have_count(0)
    expect(answer).to_contain_text("[image: remote]")
    assert web.page.evaluate("window.pwned") is None
    assert answer.locator("a").get_attribute("rel") == "noopener noreferrer"
    # A failed run is shown in red (the theme's danger colour, not the text colour).
    failed = web.page.locator(".tool-run.error .tool-output")
    expect(failed).to_contain_text("ZeroDivisionError")
    text_colour = web.page.evaluate("getComputedStyle(document.body).color")
    assert failed.evaluate("e => getComputedStyle(e).color") != text_colour
    page = httpx.get(web.base_url + "/", timeout=30)
    assert "default-src 'self'" in page.headers["content-security-policy"]
    web.shot("stored")
    # The fixture checks every request this page made: all on the server's origin.


def test_without_the_vendor_assets_replies_are_plain_text(web: Page, admin_key: str) -> None:
    web.page.route("**/ui/vendor/**", lambda route: route.fulfill(status=404, body="absent"))
    web.open(admin_key)
    store_conversation(web)
    assert web.page.evaluate("document.documentElement.dataset.markdown") == "off"
    answer = web.page.locator(".message.assistant .answer")
    expect(answer).to_have_class(re.compile("plain"))
    expect(answer).to_contain_text("```python")  # shown as written, not rendered
    expect(answer.locator("img")).to_have_count(0)
    expect(web.page.locator(".tool-run.error")).to_have_count(1)
