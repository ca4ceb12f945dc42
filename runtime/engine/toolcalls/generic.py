"""The generic format's prompt side: for templates that only know role + content.

Tools are described in a system-prompt block; earlier calls are written back as the same
JSON envelope the model is asked to produce, and tool results become user messages (many
templates reject a `tool` role or insist that user and assistant alternate), in plain text:
"Result of python:" and the output. A small model (SmolLM2-135M) reads that as something to
answer from; a JSON `{"tool_results": ...}` object it tended to copy back as JSON.
"""

from __future__ import annotations

import json
from typing import Any

from runtime.ir import Message, TextPart, ToolCallPart, ToolResultPart, ToolSpec

INSTRUCTIONS = (
    "To call tools, answer with only a JSON object of this form and nothing else:\n"
    '{"tool_calls": [{"name": "<tool name>", "arguments": {<the arguments>}}]}\n'
    'Tool results come back in a message that starts with "Result of <tool name>:". '
    "When no tool is needed, answer normally."
)


def tools_prompt(tools: list[ToolSpec]) -> str:
    lines = ["# Tools", "", "You can call these tools:"]
    for tool in tools:
        spec: dict[str, Any] = {"name": tool.name}
        if tool.description:
            spec["description"] = tool.description
        spec["parameters"] = tool.parameters
        lines.append(json.dumps(spec, ensure_ascii=False))
    return "\n".join([*lines, "", INSTRUCTIONS])


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def calls_text(calls: list[ToolCallPart]) -> str:
    envelope = {"tool_calls": [{"name": c.name, "arguments": _arguments(c.arguments)} for c in calls]}
    return json.dumps(envelope, ensure_ascii=False)


def results_text(results: list[dict[str, Any]]) -> str:
    """One user message for a round's results: `Result of NAME:` (or `NAME failed:`) and the
    content, per result; text the user added comes last, as it is."""
    blocks = []
    for result in results:
        name = result.get("name")
        if name is None:  # the user's own text next to the results
            blocks.append(str(result["content"]))
        else:
            head = f"{name or 'the tool'} failed:" if result.get("is_error") else f"Result of {name or 'the tool'}:"
            blocks.append(f"{head}\n{result['content']}")
    return "\n\n".join(blocks)


def prepare_generic(messages: list[Message], tools: list[ToolSpec]) -> list[Message]:
    """Rewrite a conversation with tools into plain role + content messages."""
    out: list[Message] = []
    rest = messages
    if tools:
        prompt = tools_prompt(tools)
        if messages and messages[0].role == "system":
            prompt = f"{messages[0].text}\n\n{prompt}"
            rest = messages[1:]
        out.append(Message("system", [TextPart(prompt)]))
    names: dict[str, str] = {}  # call id -> tool name, for results that do not say
    pending: list[dict[str, Any]] = []  # results waiting to become one user message

    def flush() -> None:
        if pending:
            out.append(Message("user", [TextPart(results_text(pending))]))
            pending.clear()

    for message in rest:
        calls = [p for p in message.parts if isinstance(p, ToolCallPart)]
        results = [p for p in message.parts if isinstance(p, ToolResultPart)]
        if results:
            for r in results:
                entry: dict[str, Any] = {"name": r.name or names.get(r.call_id, ""), "content": r.content}
                if r.is_error:
                    entry["is_error"] = True
                pending.append(entry)
            text = message.text if message.role != "tool" else ""
            if text.strip():
                pending.append({"content": text})
            continue
        flush()
        if message.role == "assistant" and calls:
            names.update((c.id, c.name) for c in calls)
            text = message.text.strip()
            content = f"{text}\n{calls_text(calls)}" if text else calls_text(calls)
            out.append(Message("assistant", [TextPart(content)]))
        else:
            out.append(message)
    flush()
    return _merge_user_turns(out)


def _merge_user_turns(messages: list[Message]) -> list[Message]:
    """Adjacent user messages as one (tool results, then images a tool showed, then the
    user's text): templates that insist on alternating roles (Gemma) reject two in a row."""
    out: list[Message] = []
    for message in messages:
        if out and message.role == "user" and out[-1].role == "user":
            out[-1] = Message("user", [*out[-1].parts, TextPart("\n\n"), *message.parts])
        else:
            out.append(message)
    return out
