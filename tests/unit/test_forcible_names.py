"""Which names a request's `tool_choice` may force (dialects/common.py)."""

from dialects.common import forcible_tool_names, server_tools
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
