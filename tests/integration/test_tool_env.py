"""The tool environment through the real server (`POST /v1/sessions/{id}/tools/{name}`): pandas
in the python tool and in bash, a start-up line saying which tools are ready, and a sandbox that
sees neither the server's virtualenv nor its keys database nor its data directory."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.servers import CliServer, session_tool

pytestmark = [
    pytest.mark.integration,
    pytest.mark.sandbox,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
]


def run_tool(server: CliServer, key: str, session: str, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return session_tool(server.base_url, key, session, tool, arguments, timeout=120)


def test_pandas_describe_through_the_server(real_server: CliServer, real_key: str) -> None:
    code = 'import pandas as pd\npd.DataFrame({"a": [1, 2, 3]}).describe()'
    result = run_tool(real_server, real_key, "pandas", "python", {"code": code})
    assert not result["is_error"], result["output"]
    rows = {line.split()[0]: line.split()[1:] for line in result["output"].splitlines() if line.split()}
    assert rows["count"] == ["3.0"] and rows["mean"] == ["2.0"] and rows["max"] == ["3.0"]


def test_python3_in_bash_has_pandas(real_server: CliServer, real_key: str) -> None:
    command = "python3 -c 'import pandas; print(\"pandas\", pandas.__version__)'"
    result = run_tool(real_server, real_key, "pandas", "bash", {"command": command})
    assert result["output"].startswith("pandas "), result["output"]


def test_start_up_log_says_which_tools_are_ready(real_server: CliServer) -> None:
    ready = [line for line in real_server.log().splitlines() if "tools ready:" in line]
    assert ready, real_server.log()[-2000:]
    assert "python (tool env " in ready[0] and "pandas " in ready[0] and "bash" in ready[0]
    assert "NOT ready" not in ready[0]


def test_the_sandbox_sees_no_server_venv_keys_or_data_dir(real_server: CliServer, real_key: str) -> None:
    # The server runs on this interpreter (CliServer starts `sys.executable -m runtime.cli`).
    secrets = {
        "venv": Path(sys.prefix),
        "venv python": Path(sys.executable),
        "keys": real_server.data_dir / "keys.sqlite3",
        "data dir": real_server.data_dir,
        "sessions": real_server.data_dir / "sessions",
    }
    assert all(path.exists() for path in secrets.values())  # they are there, outside
    probe = (
        "import os\nfor p in {paths!r}: print(p, os.path.exists(p))\nprint('/workspace', os.path.isdir('/workspace'))"
    )
    paths = [str(p) for p in secrets.values()]
    seen = run_tool(real_server, real_key, "isolated", "python", {"code": probe.format(paths=paths)})["output"]
    assert seen.splitlines() == [f"{p} False" for p in paths] + ["/workspace True"], seen
    command = " ; ".join(f"test -e '{p}' && echo 'VISIBLE {p}'" for p in paths) + " ; echo checked"
    shown = run_tool(real_server, real_key, "isolated", "bash", {"command": command})["output"]
    assert "VISIBLE" not in shown and "checked" in shown, shown
