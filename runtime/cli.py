"""`toolstudio run`, `toolstudio keys create|list|revoke` and `toolstudio tools setup|install|status`."""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import socket
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import FrameType

import uvicorn

from runtime import toolenv
from runtime.config import (
    EngineConfig,
    SamplingDefaults,
    ServerConfig,
    ToolsConfig,
    UpstreamConfig,
    default_data_dir,
)
from runtime.keys import KeyStore, KeyStoreError
from runtime.model_source import ModelSourceError, check_gguf, model_id_for, resolve_model, resolve_projector
from runtime.observability import configure_logging
from runtime.plugins import PluginError
from runtime.storage import KEYS_FILE, open_storage

log = logging.getLogger("toolstudio")


def at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: a whole number of at least `minimum` (a 0 slot count or a negative
    cache size would otherwise fail much later, or quietly mean something else)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


positive = at_least(1)


def _run_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser("run", help="start the API server")
    run.add_argument("--model", "-m", help="a .gguf path or owner/repo[:quant] (default: embedded SmolLM2-135M)")
    run.add_argument("--alias", action="append", default=[], help="another name for the model (repeatable)")
    run.add_argument("-c", "--ctx-size", type=positive, default=4096, help="context window per request (tokens)")
    run.add_argument("--threads", type=positive, default=None, help="CPU threads for decoding (default: all cores)")
    run.add_argument(
        "-ngl",
        "--n-gpu-layers",
        type=at_least(-1),
        default=-1,
        metavar="N",
        help="model layers to put on the GPU (default -1: all; 0: none); ignored by a CPU-only llama.cpp build",
    )
    run.add_argument(
        "--determinism",
        choices=["off", "prompt", "full"],
        default=None,
        help="greedy output independent of the prompt cache (prompt, the CPU default), also of batching "
        "(full: slower), or llama.cpp's fastest kernels (off, the GPU default); see the README",
    )
    run.add_argument(
        "--model-draft",
        "-md",
        type=Path,
        default=None,
        metavar="PATH",
        help="speculative decoding with this small GGUF as the draft (it must share the model's vocabulary)",
    )
    run.add_argument(
        "--spec",
        choices=["ngram"],
        default=None,
        help="speculative decoding without a draft model: ngram drafts from the text so far (prompt lookup)",
    )
    run.add_argument(
        "--draft-max",
        type=positive,
        default=8,
        help="most draft tokens per sequence and step, at most 32 (speculative decoding)",
    )
    run.add_argument(
        "--jump-forward",
        choices=["on", "off"],
        default="on",
        help="decode the text a grammar forces (tool-call envelopes, schema keys) many tokens a step, "
        "verified like a speculative draft (on, the default) or one token a step (off)",
    )
    run.add_argument("--parallel", "-np", type=positive, default=4, help="requests decoded together (slots)")
    run.add_argument("--max-queue", type=at_least(0), default=64, help="requests allowed to wait for a slot")
    run.add_argument("--max-n", type=positive, default=8, help="most choices one request may ask for (OpenAI's n)")
    run.add_argument(
        "--prefill-chunk", type=positive, default=64, help="prompt tokens per step while other requests run"
    )
    run.add_argument(
        "--cache-ram",
        type=at_least(0),
        default=2048,
        metavar="MIB",
        help="host RAM for the KV cache of conversations evicted from slots (0: off)",
    )
    run.add_argument(
        "--reasoning", choices=["on", "off", "auto"], default="auto", help="thinking default (auto: the template's)"
    )
    run.add_argument("--chat-template-file", type=Path, help="a Jinja chat template to use instead of the GGUF's")
    run.add_argument(
        "--tool-format",
        metavar="NAME",
        help="the tool-call format (family) instead of the one detected from the chat template",
    )
    run.add_argument(
        "--mmproj",
        type=Path,
        help="a multimodal projector GGUF matching the model (image input); "
        "for owner/repo models, the repository's own mmproj file is used unless --no-mmproj",
    )
    run.add_argument("--no-mmproj", action="store_true", help="do not load a projector found next to a Hub model")
    run.add_argument(
        "--allow-private-image-urls",
        action="store_true",
        help="let image URLs point at private, loopback and link-local addresses (refused by default)",
    )
    run.add_argument("--temp", "--temperature", dest="temperature", type=float, default=0.8)
    run.add_argument("--top-p", type=float, default=0.95)
    run.add_argument("--top-k", type=int, default=40)
    run.add_argument("--min-p", type=float, default=0.05)
    run.add_argument("--repeat-penalty", type=float, default=1.0)
    tools = run.add_argument_group("server-side tools")
    tools.add_argument(
        "--enable-tools",
        action="store_true",
        help="give the server tools to requests that do not say enable_tools themselves",
    )
    tools.add_argument("--max-tool-iterations", type=positive, default=8, help="tool rounds per request")
    tools.add_argument("--tool-timeout", type=float, default=60.0, help="seconds per tool call")
    tools.add_argument("--max-sessions", type=positive, default=32, help="live tool sessions (oldest idle evicted)")
    tools.add_argument("--session-idle", type=float, default=1800.0, help="seconds before an idle session closes")
    tools.add_argument(
        "--session-ttl",
        type=float,
        default=7 * 24 * 3600.0,
        metavar="SECONDS",
        help="how long a closed session's files are kept after its last use (default 7 days)",
    )
    tools.add_argument("--search-provider", default="ddgs", help="web search backend (a plugin may add more)")
    tools.add_argument(
        "--unsafe-no-sandbox", action="store_true", help="run tools WITHOUT bubblewrap isolation (not for shared hosts)"
    )
    tools.add_argument(
        "--session-disk",
        type=at_least(0),
        default=1024,
        metavar="MIB",
        help="disk quota of each session's workspace, MiB (0: none); enforced as root with a loop-mounted image",
    )
    tools.add_argument(
        "--kernel-pool",
        type=at_least(0),
        default=1,
        metavar="N",
        help="python kernels started ahead for new sessions (never shared: each is handed to one session "
        "with its sandbox); 0: a session's first python call starts its kernel (about 0.5 s)",
    )
    _tool_env_option(tools)
    _upstream_options(run)
    tools.add_argument(
        "--mcp-config",
        type=Path,
        metavar="FILE",
        help='MCP servers whose tools become server tools SERVER__TOOL: {"mcpServers": {...}} (docs/mcp.md)',
    )
    run.add_argument("-p", "--port", type=int, default=8888)
    run.add_argument("-H", "--host", default="127.0.0.1")
    run.add_argument("--cors-origin", action="append", default=[], help="allow browser calls from this origin")
    _database_option(run)
    _common(run)


def _database_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        default=os.environ.get("TOOLSTUDIO_DATABASE_URL") or None,
        metavar="URL",
        help="keys and stored responses in this PostgreSQL database, shared by every front-end given the same "
        "URL: postgresql://user:password@host:port/dbname (env TOOLSTUDIO_DATABASE_URL; default: SQLite "
        "files under the data dir; docs/scale-out.md)",
    )


def _upstream_options(run: argparse.ArgumentParser) -> None:
    upstream = run.add_argument_group("scale out: an OpenAI-compatible cluster decodes (docs/scale-out.md)")
    upstream.add_argument(
        "--upstream",
        action="append",
        default=[],
        metavar="URL",
        help="a Chat Completions server (vLLM, SGLang, llama-server, toolstudio) to decode on instead of "
        "a local model; repeat for several (balanced, session_id affinity)",
    )
    upstream.add_argument(
        "--upstream-key", metavar="KEY", help="API key for the upstream (env TOOLSTUDIO_UPSTREAM_KEY)"
    )
    upstream.add_argument("--upstream-model", metavar="NAME", help="the upstream's model (default: the one it lists)")
    upstream.add_argument(
        "--upstream-vision", action="store_true", help="forward images to the upstream even if it does not say it sees"
    )
    upstream.add_argument(
        "--upstream-timeout", type=float, default=300.0, metavar="SECONDS", help="seconds without a byte before a 504"
    )


def _upstream_config(args: argparse.Namespace) -> UpstreamConfig | None:
    """The `--upstream*` flags as config; ValueError for a bad URL or a conflicting flag."""
    if not args.upstream:
        return None
    from runtime.engine.upstream.probe import base_url

    if args.model:
        raise ValueError("--model and --upstream exclude each other: with --upstream no model is loaded here")
    return UpstreamConfig(
        urls=tuple(base_url(u) for u in args.upstream),
        api_key=args.upstream_key or os.environ.get("TOOLSTUDIO_UPSTREAM_KEY") or None,
        model=args.upstream_model,
        vision=True if args.upstream_vision else None,
        read_timeout=args.upstream_timeout,
    )


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="keys and state (env TOOLSTUDIO_HOME, default ~/.toolstudio)"
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", default="text", choices=["text", "json"])


def _tool_env_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--tool-env",
        type=Path,
        metavar="PATH",
        help="the virtualenv the python tool and `python3` in bash run on (env TOOLSTUDIO_TOOL_ENV; "
        "default /opt/toolstudio/tool-env as root, else <data dir>/tool-env)",
    )


def _tools_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tools = sub.add_parser("tools", help="the tool environment (the python tool's packages)")
    tools_sub = tools.add_subparsers(dest="tools_command", required=True)
    setup = tools_sub.add_parser(
        "setup", help="build or update the tool environment from plugins/python_tool/requirements.txt"
    )
    setup.add_argument("--upgrade", action="store_true", help="upgrade the packages within their pinned ranges")
    setup.add_argument(
        "--python",
        default=toolenv.BASE_INTERPRETER,
        help="the base interpreter (must live under /usr: the sandbox sees only that)",
    )
    install = tools_sub.add_parser("install", help="pip-install packages into the tool environment (kept on rebuilds)")
    install.add_argument("packages", nargs="+", metavar="PKG", help="pip requirement, e.g. seaborn or 'polars>=1'")
    status = tools_sub.add_parser("status", help="where the tool environment is and what it has")
    for parser in (setup, install, status):
        _tool_env_option(parser)
        _common(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toolstudio", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {importlib.metadata.version('toolstudio')}")
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key and print it (only the key)")
    create.add_argument("--name", default=None)
    create.add_argument("--admin", action="store_true", help="the key may manage keys (web page: Settings → API)")
    listing = keys_sub.add_parser("list", help="list keys (never the secret)")
    revoke = keys_sub.add_parser("revoke", help="revoke a key by name or prefix")
    revoke.add_argument("name_or_prefix")
    for key_parser in (create, listing, revoke):
        _database_option(key_parser)
        _common(key_parser)
    _tools_parser(sub)
    return parser


def fail(message: str) -> int:
    print(f"toolstudio: error: {message}", file=sys.stderr)
    return 1


def _keys(args: argparse.Namespace, data_dir: Path) -> int:
    path = data_dir / KEYS_FILE
    if not args.database_url and args.keys_command != "create" and not path.is_file():
        # Never create an empty database for a mistyped --data-dir.
        return fail(f"no keys database at {path} (wrong --data-dir or TOOLSTUDIO_HOME?); create a key first")
    storage = open_storage(args.database_url, data_dir)
    store = KeyStore(storage.keys)
    try:
        if args.keys_command == "create":
            _, key = store.create(args.name, admin=args.admin)
            print(key)
        elif args.keys_command == "list":
            print(f"{'NAME':<20} {'PREFIX':<22} {'CREATED':<20} {'LAST USED':<20} {'ROLE':<6} STATUS")
            stamp = lambda t: datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M") if t else "-"  # noqa: E731
            for r in store.list():
                status = "revoked" if r.revoked else "active"
                role = "admin" if r.admin else "user"
                print(
                    f"{r.name:<20} {r.prefix + '…':<22} {stamp(r.created):<20} {stamp(r.last_used):<20} {role:<6} {status}"
                )
        else:
            record = store.revoke(args.name_or_prefix)
            print(f"revoked {record.name} ({record.prefix}…)")
    finally:
        store.close()
        storage.close()
    return 0


def _tools(args: argparse.Namespace, data_dir: Path) -> int:
    env = (args.tool_env or toolenv.default_tool_env(data_dir)).absolute()
    try:
        if args.tools_command == "setup":
            changed = toolenv.setup(env, base=args.python, upgrade=args.upgrade)
            print(f"tool environment {'ready' if changed else 'up to date'}: {toolenv.describe(env)}")
        elif args.tools_command == "install":
            toolenv.install(env, args.packages)
            print(f"installed into {env}: {' '.join(args.packages)} (kept when `toolstudio tools setup` rebuilds)")
        else:
            why = toolenv.problem(env)
            print(f"tool environment: {why}" if why else f"tool environment: {toolenv.describe(env)}")
            return 1 if why else 0
    except toolenv.ToolEnvError as exc:
        return fail(str(exc))
    return 0


class DrainingServer(uvicorn.Server):
    """On SIGTERM/SIGINT, end in-flight generations first, so every stream ends (with its
    dialect's error: the answer was cut) and the process exits promptly instead of waiting
    for long generations."""

    def __init__(self, config: uvicorn.Config, *, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.on_exit()
        super().handle_exit(sig, frame)


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _run(args: argparse.Namespace, data_dir: Path) -> int:
    from runtime.app import create_app
    from runtime.images import ImagePolicy

    if not _port_free(args.host, args.port):
        return fail(f"port {args.port} on {args.host} is already in use; pick another with -p/--port")
    try:
        upstream = _upstream_config(args)
    except ValueError as exc:
        return fail(str(exc))
    # With --upstream nothing is loaded here: the model path is a placeholder no one opens.
    model_path = resolve_model(args.model) if upstream is None else Path(os.devnull)
    if upstream is None:
        check_gguf(model_path)
    if args.chat_template_file and not args.chat_template_file.is_file():
        return fail(f"chat template file not found: {args.chat_template_file}")
    if args.tool_format:
        from runtime.engine.toolcalls.registry import format_named  # imports llama.cpp: only for `run`

        try:
            format_named(args.tool_format)
        except ValueError as exc:
            return fail(str(exc))
    tool_env = (args.tool_env or toolenv.default_tool_env(data_dir)).absolute()
    if args.tool_env is not None and (why := toolenv.problem(tool_env)):
        return fail(f"--tool-env: {why}")
    if args.mcp_config is not None and not args.mcp_config.is_file():
        return fail(f"--mcp-config: no such file: {args.mcp_config}")
    mmproj = args.mmproj
    if mmproj is None and not args.no_mmproj and upstream is None:
        mmproj = resolve_projector(args.model)
        if mmproj is not None:
            log.info("using the projector %s published with %s (--no-mmproj to skip it)", mmproj.name, args.model)
    if mmproj is not None:
        if not mmproj.is_file():
            return fail(f"mmproj file not found: {mmproj}")
        check_gguf(mmproj)
    if args.model_draft is not None and args.spec is not None:
        return fail("--model-draft and --spec ngram are two ways to draft: choose one")
    if args.model_draft is not None or args.spec is not None:
        from runtime.engine.speculative import DRAFT_MAX_LIMIT  # imports llama.cpp: only when drafting

        if args.draft_max > DRAFT_MAX_LIMIT:
            # Measuring the cost of every draft length at start would take minutes to an hour.
            return fail(f"--draft-max: at most {DRAFT_MAX_LIMIT}, got {args.draft_max}")
    if args.model_draft is not None:
        if upstream is not None:
            return fail("--model-draft needs a local model, not --upstream")
        if not args.model_draft.is_file():
            return fail(f"--model-draft: no such file: {args.model_draft}")
        check_gguf(args.model_draft)
    engine = EngineConfig(
        model_path=model_path,
        ctx_size=args.ctx_size,
        threads=args.threads,
        parallel=args.parallel,
        max_queue=args.max_queue,
        max_n=args.max_n,
        prefill_chunk=args.prefill_chunk,
        cache_ram_mib=args.cache_ram,
        reasoning=args.reasoning,
        chat_template_file=args.chat_template_file,
        tool_format=args.tool_format,
        mmproj_path=mmproj,
        n_gpu_layers=args.n_gpu_layers,
        draft_model_path=args.model_draft,
        spec_ngram=args.spec == "ngram",
        draft_max=args.draft_max,
        jump_forward=args.jump_forward == "on",
        determinism=args.determinism,
    )
    config = ServerConfig(
        engine=engine,
        model_id=_model_id(args, model_path, upstream),
        aliases=tuple(args.alias),
        host=args.host,
        port=args.port,
        cors_origins=tuple(args.cors_origin),
        images=ImagePolicy(allow_private=args.allow_private_image_urls),
        data_dir=data_dir,
        tools=ToolsConfig(
            enable_by_default=args.enable_tools,
            max_iterations=args.max_tool_iterations,
            tool_timeout=args.tool_timeout,
            max_sessions=args.max_sessions,
            session_idle_seconds=args.session_idle,
            session_ttl_seconds=args.session_ttl,
            search_provider=args.search_provider,
            unsafe_no_sandbox=args.unsafe_no_sandbox,
            session_disk_mib=args.session_disk,
            kernel_pool=args.kernel_pool,
            tool_env=tool_env,
            mcp_config=args.mcp_config.absolute() if args.mcp_config is not None else None,
        ),
        upstream=upstream,
        database_url=args.database_url,
        sampling=SamplingDefaults(
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            min_p=args.min_p,
            repeat_penalty=args.repeat_penalty,
        ),
    )
    storage = open_storage(config.database_url, data_dir)
    if storage.shared:
        log.info("keys and stored responses: %s (shared with every front-end given this URL)", storage.location)
    keys = KeyStore(storage.keys)
    if not keys.has_active_keys():
        _, key = keys.create("default", admin=True)  # someone must be able to manage keys on the web page
        # Printed once, to the terminal, on purpose: it is never logged.
        print(f"\nCreated an API key (shown only now):\n\n    {key}\n\nexport UNSLOTH_STUDIO_AUTH_TOKEN={key}\n")
        host = f"[{args.host}]" if ":" in args.host else args.host  # an IPv6 address in a URL
        print(f"It is an admin key. Web page: http://{host}:{args.port}/ (paste the key to sign in)\n")
    app = create_app(config, keys=keys, storage=storage)
    runtime = app.state.runtime
    # A backstop for connections that outlive the drain (e.g. a tool still running).
    uv_config = uvicorn.Config(
        app, host=args.host, port=args.port, log_config=None, access_log=False, timeout_graceful_shutdown=10
    )
    server = DrainingServer(uv_config, on_exit=runtime.drain)
    runtime.on_load_failure = lambda: setattr(server, "should_exit", True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: reachable from the network; every /v1 route still needs an API key", args.host)
    log.info("serving %s on http://%s:%d/v1 (web page: http://%s:%d/)", config.model_id, *[args.host, args.port] * 2)
    server.run()
    if runtime.load_error:
        return fail(runtime.load_error)
    return 0


def _model_id(args: argparse.Namespace, model_path: Path, upstream: UpstreamConfig | None) -> str:
    if upstream is None:
        return model_id_for(args.model, model_path)
    from runtime.engine.upstream.probe import discover_model

    return upstream.model or discover_model(list(upstream.urls), upstream.api_key) or "upstream"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    data_dir = (args.data_dir or default_data_dir()).expanduser()
    try:
        if args.command == "keys":
            return _keys(args, data_dir)
        if args.command == "tools":
            return _tools(args, data_dir)
        return _run(args, data_dir)
    except (KeyStoreError, ModelSourceError, PluginError) as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
