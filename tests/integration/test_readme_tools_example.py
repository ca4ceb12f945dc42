"""The README's server-tools example, run as written against the real server and the embedded
model: the first thing a new user runs must show a real python run and a sensible answer."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from pathlib import Path

import openai
import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.sandbox,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
]

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_example(section: str) -> str:
    """The first ```python block after the heading `section`."""
    text = README.read_text()
    start = text.index(f"\n{section}\n")
    match = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert match, f"no python example under {section!r}"
    return match.group(1)


def test_the_server_tools_example_runs_python_and_answers(oai: openai.OpenAI) -> None:
    code = readme_example("## Server-side tools")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, str(README), "exec"), {"client": oai})  # `client` as the quickstart made it
    lines = printed.getvalue().strip().splitlines()
    assert len(lines) >= 2, printed.getvalue()
    tool_line, answer = lines[0], "\n".join(lines[1:])
    assert tool_line.startswith("python ") and tool_line.endswith("-> 56088"), tool_line  # the kernel computed it
    assert "56088" in answer and "tool_calls" not in answer, answer  # and the model said it
