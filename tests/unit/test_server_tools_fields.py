"""The server-tools fields every dialect shares (dialects/common.py): which names a
`tool_choice` may force, and which session ids are accepted."""

import pytest

from dialects.common import forcible_tool_names, server_tools
from runtime.errors import InvalidRequest
from runtime.ir import ToolSpec


def test_client_tools_and_enabled_server_tools_are_forcible() -> None:
    names = forcible_tool_names([ToolSpec("get_weather", "", {})], server_tools(True, ["python"], "s", None))
    assert "get_weather" in names and "python" in names
    assert "bash" not in names


def test_a_tool_of_an_enabled_mcp_server_is_forcible_by_its_full_name() -> None:
    # `enabled_tools: ["counter"]` enables every `counter__*` tool (plugins/mcp).
    names = forcible_tool_names([], server_tools(True, ["counter"], "s", None))
    assert "counter__increment" in names
    assert "other__increment" not in names and "counter" in names and "counterx__a" not in names


def test_without_server_tools_only_client_tools_are_forcible() -> None:
    names = forcible_tool_names([], server_tools(None, ["counter"], None, None))
    assert not names and "counter__increment" not in names


@pytest.mark.parametrize("bad", ["", "a/b", "x\n", "tab\there", "z" * 257])
def test_a_session_id_that_no_session_route_could_reach_is_a_400(bad: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        server_tools(True, ["python"], bad, None)
    assert caught.value.param == "session_id"


def test_any_other_session_id_is_kept_as_sent() -> None:
    for good in ["my-session", "ユーザー 1", "a.b:c@d", "z" * 256]:
        assert server_tools(True, None, good, None).session_id == good
