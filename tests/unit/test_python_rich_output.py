"""The `python` tool's rich output with real sandboxed Jupyter kernels: matplotlib figures
(inline backend, PNG and SVG), JPEG display data, HTML tables (DataFrame), their caps, and
`is_error` for a cell that raised, did not parse or timed out."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from plugins.python_tool import PythonTool
from plugins.python_tool.messages import MAX_ATTACHMENTS
from runtime.sandbox import bwrap_available
from runtime.sessions import Session
from runtime.tools import ToolContext

pytestmark = [
    pytest.mark.sandbox,
    pytest.mark.skipif(not bwrap_available(), reason="bubblewrap is not installed (apt-get install bubblewrap)"),
]

PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.title('rise')"


@pytest.fixture(scope="module")
def tool() -> PythonTool:
    return PythonTool()


@pytest.fixture
async def session(tmp_path: Path) -> AsyncIterator[Session]:
    session = Session(key_id="key", session_id="rich", workspace=tmp_path / "rich")
    yield session
    await session.close()


def context(session: Session) -> ToolContext:
    return ToolContext(session=session, deadline=time.monotonic() + 60)


async def require(tool: PythonTool, session: Session, module: str) -> None:
    """Skip unless the kernel's interpreter (not the server's) can import `module`."""
    out = await tool.run({"code": f"import {module}"}, context(session))
    if "ModuleNotFoundError" in out.text:
        pytest.skip(f"the kernel's interpreter has no {module} (the tool environment provides it)")


async def test_a_matplotlib_figure_is_a_png_attachment(tool: PythonTool, session: Session) -> None:
    await require(tool, session, "matplotlib")
    out = await tool.run({"code": PLOT}, context(session))
    assert not out.is_error
    assert [(a.kind, a.media_type) for a in out.attachments] == [("image", "image/png")]
    with Image.open(io.BytesIO(base64.b64decode(out.attachments[0].data))) as image:
        assert image.format == "PNG" and image.width > 100
    assert "[image/png image 1 attached]" in out.text
    assert "iVBOR" not in out.text  # the model never reads base64


async def test_an_svg_figure_is_an_attachment_of_base64_xml(tool: PythonTool, session: Session) -> None:
    await require(tool, session, "matplotlib")
    code = f"%config InlineBackend.figure_formats = ['svg']\n{PLOT}"
    out = await tool.run({"code": code}, context(session))
    assert [(a.kind, a.media_type) for a in out.attachments] == [("image", "image/svg+xml")]
    assert "<svg" in base64.b64decode(out.attachments[0].data).decode()
    assert "[image/svg+xml image 1 attached]" in out.text


async def test_jpeg_display_data_is_an_attachment(tool: PythonTool, session: Session) -> None:
    picture = io.BytesIO()
    Image.new("RGB", (6, 4), "blue").save(picture, format="JPEG")
    code = (
        "import base64\nfrom IPython.display import Image, display\n"
        f"display(Image(data=base64.b64decode({base64.b64encode(picture.getvalue()).decode()!r}), format='jpeg'))"
    )
    out = await tool.run({"code": code}, context(session))
    assert [a.media_type for a in out.attachments] == ["image/jpeg"]
    assert base64.b64decode(out.attachments[0].data) == picture.getvalue()


async def test_html_output_is_an_attachment_next_to_its_text_repr(tool: PythonTool, session: Session) -> None:
    code = (
        "class Table:\n"
        "    def __repr__(self): return 'a  b\\n1  2'\n"
        "    def _repr_html_(self): return '<table><tr><td>1</td><td>2</td></tr></table>'\n"
        "Table()"
    )
    out = await tool.run({"code": code}, context(session))
    assert out.text == "a  b\n1  2"  # the model reads the plain repr, unannounced
    assert [(a.kind, a.media_type) for a in out.attachments] == [("html", "text/html")]
    assert base64.b64decode(out.attachments[0].data).decode() == "<table><tr><td>1</td><td>2</td></tr></table>"


async def test_a_dataframe_is_its_text_plus_an_html_table(tool: PythonTool, session: Session) -> None:
    await require(tool, session, "pandas")
    out = await tool.run({"code": "import pandas as pd\npd.DataFrame({'x': [1, 2, 3]}).describe()"}, context(session))
    assert "mean" in out.text and "<table" not in out.text
    assert [a.media_type for a in out.attachments] == ["text/html"]
    assert "<table" in base64.b64decode(out.attachments[0].data).decode()


async def test_attachments_past_the_cap_are_named_not_attached(tool: PythonTool, session: Session) -> None:
    code = (
        "from IPython.display import HTML, display\n"
        f"for i in range({MAX_ATTACHMENTS + 2}):\n    display(HTML(f'<p>{{i}}</p>'))"
    )
    out = await tool.run({"code": code}, context(session))
    assert len(out.attachments) == MAX_ATTACHMENTS
    assert out.text.count("was not attached") == 2


@pytest.mark.parametrize(
    ("code", "needle"),
    [
        ("print('before')\n{}['missing']", "KeyError"),
        ("def broken(:\n    pass", "SyntaxError"),
        ("import time\ntime.sleep(30)", "timed out"),
    ],
    ids=["exception", "syntax-error", "timeout"],
)
async def test_a_failed_cell_is_an_error_result(tool: PythonTool, session: Session, code: str, needle: str) -> None:
    out = await tool.run({"code": code, "timeout": 1}, context(session))
    assert out.is_error
    assert needle in out.text
    after = await tool.run({"code": "print('fine')"}, context(session))
    assert (after.text, after.is_error) == ("fine", False)


async def test_output_before_the_exception_is_kept(tool: PythonTool, session: Session) -> None:
    out = await tool.run({"code": "print('before')\nraise ValueError('bad value')"}, context(session))
    assert out.is_error
    assert out.text.startswith("before\n")
    assert "ValueError: bad value" in out.text
