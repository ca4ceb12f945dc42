"""Figures from the python tool through the real server, the real sandboxed kernel and the
official SDKs: a matplotlib plot comes back as an image attachment in every dialect's
`tool_result`, a failed cell as `is_error: true`, and with `--mmproj` (the tiny projector of
tests/tiny_mmproj.py) the model sees the plot on its next turn.

The packaged 135M model cannot be relied on to write plotting code, so the session is first
prepared through `POST /v1/sessions/{id}/tools/python`: an IPython input transformer replaces
whatever code the model's (forced) python call holds with `draw()`, which plots a solid square
of the session's colour. Everything after that — the call, the kernel, matplotlib's inline
backend, the dialects, the projector — is the real path.
"""

from __future__ import annotations

import base64
import io
import shutil
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest
from PIL import Image

from tests.servers import CliServer, session_tool, toolstudio
from tests.tiny_mmproj import write_tiny_mmproj

pytestmark = [
    pytest.mark.integration,
    pytest.mark.sandbox,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
]

ASK = "Draw a plot of the data with Python."
OPTIONS = {"max_tool_calls_per_message": 1}  # one forced run, then the model answers


def prepare(server: CliServer, key: str, session: str, colour: str) -> None:
    """Make every later python cell of `session` plot a solid `colour` square (see the module
    docstring); skip if the kernel's interpreter has no matplotlib."""
    code = f"""
import matplotlib.pyplot as plt
from matplotlib.colors import to_rgb

def draw():
    figure = plt.figure(figsize=(1, 1))
    axes = figure.add_axes([0, 0, 1, 1])
    axes.imshow([[to_rgb({colour!r})] * 4] * 4)
    axes.axis("off")

get_ipython().input_transformers_post.append(lambda lines: ["draw()\\n"])
"""
    result = session_tool(server.base_url, key, session, "python", {"code": code}, timeout=120)
    if "ModuleNotFoundError" in result["output"]:
        pytest.skip("the kernel's interpreter has no matplotlib (the tool environment provides it)")
    assert not result["is_error"], result


def tools(session: str) -> dict[str, Any]:
    return {"enable_tools": True, "enabled_tools": ["python"], "session_id": session, **OPTIONS}


def assert_png(attachments: list[dict[str, Any]], colour: tuple[int, int, int]) -> None:
    assert [(a["type"], a["media_type"]) for a in attachments] == [("image", "image/png")]
    with Image.open(io.BytesIO(base64.b64decode(attachments[0]["data"]))) as image:
        middle = image.convert("RGB").getpixel((image.width // 2, image.height // 2))
    assert middle == colour


RED = (255, 0, 0)
PYTHON_CHAT = {"type": "function", "function": {"name": "python"}}


def chat_plot(client: openai.OpenAI, session: str) -> tuple[list[dict[str, Any]], str, Any]:
    """(the streamed tool_result frames, the answer, usage) of one forced python call."""
    stream = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": ASK}],
        tool_choice=PYTHON_CHAT,  # type: ignore[arg-type]
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=tools(session),
    )
    chunks = list(stream)
    frames = [c.model_extra["tool_result"] for c in chunks if (c.model_extra or {}).get("tool_result")]
    answer = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return frames, answer, chunks[-1].usage


# -- the direct endpoint -------------------------------------------------------------------------


def test_direct_call_returns_the_figure_and_a_failed_cell_is_an_error(real_server: CliServer, real_key: str) -> None:
    run = {"code": "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])"}
    plot = session_tool(real_server.base_url, real_key, "fig-direct", "python", run, timeout=120)
    if "ModuleNotFoundError" in plot["output"]:
        pytest.skip("the kernel's interpreter has no matplotlib (the tool environment provides it)")
    assert not plot["is_error"]
    assert [(a["type"], a["media_type"]) for a in plot["attachments"]] == [("image", "image/png")]
    assert base64.b64decode(plot["attachments"][0]["data"]).startswith(b"\x89PNG")
    failed = session_tool(real_server.base_url, real_key, "fig-direct", "python", {"code": "1 / 0"})
    assert failed["is_error"] is True and "ZeroDivisionError" in failed["output"]


# -- every dialect --------------------------------------------------------------------------------


def test_chat_completions_tool_result_has_the_plot(real_server: CliServer, real_key: str, oai: openai.OpenAI) -> None:
    prepare(real_server, real_key, "fig-chat", "red")
    frames, _, _ = chat_plot(oai, "fig-chat")
    (frame,) = frames
    assert frame["name"] == "python" and frame["is_error"] is False
    assert "[image/png image 1 attached]" in frame["output"]
    assert_png(frame["attachments"], RED)


def test_responses_tool_result_has_the_plot(real_server: CliServer, real_key: str, oai: openai.OpenAI) -> None:
    prepare(real_server, real_key, "fig-responses", "red")
    response = oai.responses.create(
        model="default",
        input=ASK,
        tool_choice={"type": "function", "name": "python"},
        max_output_tokens=24,
        extra_body=tools("fig-responses"),
    )
    (result,) = response.model_extra["tool_results"]
    assert_png(result["attachments"], RED)
    events = list(
        oai.responses.create(
            model="default",
            input=ASK,
            tool_choice={"type": "function", "name": "python"},
            max_output_tokens=24,
            stream=True,
            extra_body=tools("fig-responses"),
        )
    )
    (frame,) = [e for e in events if e.type == "tool_result"]
    assert_png(frame.attachments, RED)  # type: ignore[attr-defined]


def test_anthropic_tool_result_has_the_plot(real_server: CliServer, real_key: str, claude: anthropic.Anthropic) -> None:
    prepare(real_server, real_key, "fig-anthropic", "red")
    with claude.messages.stream(
        model="default",
        max_tokens=24,
        messages=[{"role": "user", "content": ASK}],
        tool_choice={"type": "tool", "name": "python"},
        extra_body=tools("fig-anthropic"),
    ) as stream:
        (frame,) = [e for e in stream if e.type == "tool_result"]
    assert_png(frame.attachments, RED)  # type: ignore[attr-defined]
    message = claude.messages.create(
        model="default",
        max_tokens=24,
        messages=[{"role": "user", "content": ASK}],
        tool_choice={"type": "tool", "name": "python"},
        extra_body=tools("fig-anthropic"),
    )
    assert_png(message.model_extra["tool_results"][0]["attachments"], RED)
    assert message.stop_reason != "tool_use"  # the server ran it; nothing for the client to run


# -- the model sees the plot (--mmproj) -------------------------------------------------------------


@pytest.fixture(scope="module")
def vision(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CliServer, str]]:
    home = tmp_path_factory.mktemp("figures-vision")
    mmproj = write_tiny_mmproj(home / "tiny-mmproj.gguf")
    server = CliServer(home, args=("--threads", "2", "--parallel", "2", "--temp", "0", "--mmproj", str(mmproj)))
    server.start()
    yield server, toolstudio("keys", "create", data_dir=home).strip()
    server.stop()


def answers(server: CliServer, key: str, prefix: str) -> dict[str, tuple[str, int]]:
    """The answer (and prompt tokens) after a red and after a blue plot, in fresh sessions."""
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0, timeout=180)
    out: dict[str, tuple[str, int]] = {}
    for colour in ("red", "blue"):
        prepare(server, key, f"{prefix}-{colour}", colour)
        frames, answer, usage = chat_plot(client, f"{prefix}-{colour}")
        assert [f["attachments"][0]["media_type"] for f in frames] == ["image/png"]
        out[colour] = (answer, usage.prompt_tokens)
    return out


def test_a_vision_model_sees_the_plot_on_its_next_turn(
    vision: tuple[CliServer, str], real_server: CliServer, real_key: str
) -> None:
    # Both tool outputs read the same ("[image/png image 1 attached]"): only the pixels differ.
    seen = answers(*vision, "sees")
    assert seen["red"][1] == seen["blue"][1]  # the same prompt length, image positions included
    assert seen["red"][0] != seen["blue"][0], seen  # ...but the model saw different pictures
    # The control: a text-only model reads a note, so the colour cannot change its answer.
    blind = answers(real_server, real_key, "blind")
    assert blind["red"] == blind["blue"], blind
