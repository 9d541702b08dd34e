"""`mcp-interp` command line: serve (stdio or HTTP), demo, doctor, runs, install, report.

Adding a subcommand = a `_name(args) -> exit status` function and one `command(...)` block in `build_parser`."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path

WILDCARDS = ("0.0.0.0", "::", "")


def _host_port(name: str, port: int) -> str:
    return f"[{name}]:{port}" if ":" in name and not name.startswith("[") else f"{name}:{port}"


def machine_names() -> list[str]:
    """This machine's host names and addresses (what a client elsewhere puts in its Host header)."""
    names = {socket.gethostname(), socket.getfqdn()}
    for name in list(names):
        try:
            names.update(info[4][0] for info in socket.getaddrinfo(name, None))
        except OSError:
            pass
    try:  # the address of the default route (no packet is sent)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))
            names.add(s.getsockname()[0])
    except OSError:
        pass
    return sorted(n for n in names if n)


def allowed_hosts(host: str, port: int, extra: list[str] | None = None) -> list[str]:
    """Host header values the HTTP transport accepts (DNS-rebinding protection): loopback names, the bind
    address, every name and address of this machine when bound to all interfaces, and `extra` (names, with or
    without a port)."""
    names = ["127.0.0.1", "localhost", "::1"]
    names += machine_names() if host in WILDCARDS else [host]
    out = [_host_port(n, port) for n in names]
    for e in extra or []:
        e = e.strip()
        out.append(e if e.startswith("[") or e.count(":") == 1 else _host_port(e, port))
    return list(dict.fromkeys(out))


def _serve(args: argparse.Namespace) -> int:
    local = args.host in ("127.0.0.1", "localhost", "::1")
    token = os.environ.get("MCP_INTERP_TOKEN")
    if args.http and not local and not token:  # refused before anything heavy is imported
        sys.stderr.write("Refusing to bind to a non-loopback address without a token: set MCP_INTERP_TOKEN "
                         "(clients send it as 'Authorization: Bearer <token>'), or use --host 127.0.0.1.\n")
        return 2
    if args.offline:  # before huggingface_hub is imported: it reads the flag once
        os.environ["HF_HUB_OFFLINE"] = "1"
    from .app import build_server
    roots = None
    if args.http:  # a shared server: local model paths only under these roots (files elsewhere stay private)
        from ..models.loaders import default_cache_dir
        roots = [Path.cwd(), default_cache_dir(), *(Path(r) for r in args.model_root or [])]
    ray = args.ray or os.environ.get("MCP_INTERP_RAY") or None
    store = args.store or os.environ.get("MCP_INTERP_STORE")
    if store and "://" in store:  # an object store: refused now (credentials, bucket, endpoint), not at the first run
        from ..artifacts import ArtifactStore
        ArtifactStore(store)
    if ray:  # an address nothing answers at is refused now (Ray itself would retry for minutes)
        from ..runtime.cluster import resolve_address
        resolve_address(ray)
    server = build_server(args.store, args.memory_budget_mb, args.device, model_roots=roots, remote=args.http,
                          ray=ray)
    if not args.http:
        server.run("stdio")
        return 0
    from mcp.server.transport_security import TransportSecuritySettings
    hosts = allowed_hosts(args.host, args.port, args.allowed_host)
    logging.getLogger("mcp_interp").info("HTTP on %s:%d; accepted Host headers: %s", args.host, args.port,
                                         ", ".join(hosts))
    security = TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts,
                                         allowed_origins=[f"http://{h}" for h in hosts])
    if token:
        import anyio
        import uvicorn

        from .http_auth import BearerTokenMiddleware
        starlette_app = server.streamable_http_app(transport_security=security, host=args.host)
        config = uvicorn.Config(BearerTokenMiddleware(starlette_app, token), host=args.host, port=args.port)
        anyio.run(uvicorn.Server(config).serve)
        return 0
    server.run("streamable-http", host=args.host, port=args.port, transport_security=security)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    return run_demo(store=args.store, model=args.model, n=args.n)


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import run_doctor
    return run_doctor(store=args.store, load=args.load)


def _report(args: argparse.Namespace) -> int:
    """The report tool's own code path, without a server: prints the report's run id and file paths."""
    from ..runtime.context import AppContext
    from ..tools.errors import ToolError
    from ..tools.report import ReportInput, report
    app = AppContext.create(args.store)
    try:
        out = report(app, ReportInput(run_ids=args.run_ids or None, task=args.task, model=args.model, title=args.title))
    except ToolError as e:
        sys.stderr.write(f"mcp-interp report: {e}\n")
        return 2
    finally:
        app.close()
    sys.stderr.write(out.summary + "\n")
    sys.stdout.write(f"{out.run_id}\n{Path(out.html_path).with_name('report.md')}\n{out.html_path}\n")
    return 0


def _runs(args: argparse.Namespace) -> int:
    from .lab import Lab
    with Lab(store=args.store) as lab:
        if args.runs_action == "show":
            out = lab.get_run(run_id=args.run_id)
            sys.stdout.write(out.model_dump_json(indent=2) + "\n")
            return 0
        listed = lab.list_runs(task=args.task, model=args.model, tool=args.tool, status=args.status, limit=args.limit)
    if args.json:
        sys.stdout.write(listed.model_dump_json(indent=2) + "\n")
        return 0
    rows = [("RUN", "TOOL", "TASK", "MODEL", "STATUS", "CREATED")]
    rows += [(r.run_id, r.tool, r.task, r.model, r.status, r.created[:19]) for r in listed.runs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        sys.stdout.write("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() + "\n")
    sys.stdout.write(f"{len(listed.runs)} run(s) in {listed.store}\n")
    return 0


def _install(args: argparse.Namespace) -> int:
    from .install import install_claude
    return install_claude(store=args.store, project=args.project, user=args.user, name=args.name,
                          print_only=args.print)


# (variable, what it does): shown by --help and in the README
ENVIRONMENT = [
    ("MCP_INTERP_STORE", "artifact store directory or fsspec URL (s3://bucket/prefix) when --store is not given "
                         "(default ./artifacts)"),
    ("MCP_INTERP_RAY", "serve --ray ADDRESS when --ray is not given: heavy jobs run on that Ray cluster"),
    ("MCP_INTERP_RAY_CPUS", "CPUs each Ray worker actor asks for (default 1; also its torch threads on a CPU node)"),
    ("MCP_INTERP_STORE_OPTIONS", "fsspec options for a store URL, as JSON (credentials usually come from AWS_* etc.)"),
    ("MCP_INTERP_STORE_CACHE", "where a store URL's local index and read mirror live (default ~/.cache/mcp-interp)"),
    ("MCP_INTERP_SWEEP_MAX", "the most runs one sweep may start (default 64)"),
    ("MCP_INTERP_TOKEN", "bearer token HTTP clients must send; required to serve beyond loopback"),
    ("MCP_INTERP_CACHE", "converted-model cache (default ~/.cache/mcp-interp/models)"),
    ("MCP_INTERP_GEMMA3_GGUF", "path of the Gemma-3-270M GGUF file, if not in the model cache"),
    ("HF_HUB_CACHE, HF_HOME", "the Hugging Face cache hub models are downloaded into and read from"),
    ("HF_ENDPOINT", "the hub to download from (default https://huggingface.co; a mirror works too)"),
    ("HF_TOKEN", "a Hugging Face token, for gated models (or `hf auth login`)"),
    ("HF_HUB_OFFLINE", "1: no network; hub models load only from the cache (serve --offline)"),
    ("MCP_INTERP_ALLOW_PICKLE", "1: also load hub models that ship only pickled pytorch_model.bin weights"),
]
EPILOG = ("environment variables:\n" + "".join(f"  {k:<24}{v}\n" for k, v in ENVIRONMENT)
          + "\nexit status: 0 success, 1 the command failed (the reason is on stderr), 2 bad usage, 130 interrupted.\n"
          "Global options (--store, -v) may come before or after the subcommand.")


def _global_options(defaults: bool) -> argparse.ArgumentParser:
    """--store and -v, accepted before and after the subcommand: the subcommands' copies default to SUPPRESS so
    they never overwrite a value given before the subcommand."""
    g = argparse.ArgumentParser(add_help=False)
    g.add_argument("--store", default=None if defaults else argparse.SUPPRESS,
                   help="artifact store: a directory or an fsspec URL such as s3://bucket/prefix "
                        "(default $MCP_INTERP_STORE or ./artifacts)")
    g.add_argument("-v", "--verbose", action="store_true", default=False if defaults else argparse.SUPPRESS,
                   help="debug logging on stderr")
    return g


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcp-interp", description="MCP server for mechanistic interpretability.",
                                     parents=[_global_options(True)], epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    shared = _global_options(False)

    def command(name: str, help: str, fn, within=sub) -> argparse.ArgumentParser:
        """One subcommand: its parser (taking the global options too), run by `fn(args) -> exit status`."""
        p = within.add_parser(name, help=help, description=help, parents=[shared], epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(fn=fn)
        return p

    s = command("serve", "run the MCP server (stdio by default)", _serve)
    s.add_argument("--http", action="store_true", help="streamable HTTP instead of stdio")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8765)
    s.add_argument("--allowed-host", action="append", metavar="NAME[:PORT]",
                   help="also accept this Host header (repeatable); bound to 0.0.0.0 the machine's names and "
                   "addresses are accepted already")
    s.add_argument("--model-root", action="append", metavar="DIR",
                   help="over HTTP, local paths (hf:/gguf: models, SAE directories, corpus files) are read only "
                   "under the current directory, the model cache and these directories (repeatable)")
    s.add_argument("--memory-budget-mb", type=float, default=None, help="model pool budget (LRU eviction)")
    s.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="run heavy jobs on a Ray cluster: auto (the cluster this machine joined), HOST:PORT, "
                        "ray://HOST:10001, or local (start one in this process); default $MCP_INTERP_RAY")
    s.add_argument("--device", default=None, help="cpu, cuda (the GPU with the most free memory at each load) or "
                   "cuda:N (default: cuda when present)")
    s.add_argument("--offline", action="store_true", help="never touch the network: hub models load only from the "
                   "local Hugging Face cache (as HF_HUB_OFFLINE=1)")

    d = command("demo", "run the research loop on the bundled model through a real MCP client", _demo)
    d.add_argument("--model", default="smollm2-135m")
    d.add_argument("--n", type=int, default=16)

    doc = command("doctor", "versions, device, bundled model, store", _doctor)
    doc.add_argument("--load", action="store_true", help="also load the bundled model and time it")

    r = command("runs", "list the stored runs (runs list), or show one (runs show RUN)", _runs)
    r.set_defaults(runs_action="list", task=None, model=None, tool=None, status=None, limit=20, json=False)
    runs_sub = r.add_subparsers(dest="runs_action", metavar="{list,show}")
    rl = command("list", "stored runs, newest first (the default)", _runs, within=runs_sub)
    for flag in ("--task", "--model", "--tool"):
        rl.add_argument(flag, default=None, help=f"only runs with this {flag[2:]}")
    rl.add_argument("--status", default=None, help="complete, failed, running or interrupted")
    rl.add_argument("--limit", type=int, default=20)
    rl.add_argument("--json", action="store_true", help="the list_runs result as JSON")
    rs = command("show", "one run: its result, manifest and files, as JSON (the get_run result)", _runs,
                 within=runs_sub)
    rs.add_argument("run_id", metavar="RUN")

    i = command("install", "set up a client: `install claude` writes the server entry and the research skill", _install)
    i.add_argument("client", choices=["claude"], help="the client to set up (Claude Code)")
    where = i.add_mutually_exclusive_group()
    where.add_argument("--project", metavar="DIR", default=None,
                       help="write DIR/.mcp.json and DIR/.claude/skills/ (default: the current directory)")
    where.add_argument("--user", action="store_true", help="write ~/.claude.json and ~/.claude/skills/ instead")
    i.add_argument("--name", default="mcp-interp", help="the server's name in the client's config")
    i.add_argument("--print", action="store_true", help="show what would be written; write nothing")

    rep = command("report", "assemble a report (markdown + self-contained HTML) from stored runs", _report)
    rep.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="runs to report on (or --task and --model)")
    rep.add_argument("--task", help="with --model: the newest complete run of each tool for this task")
    rep.add_argument("--model", help="with --task: the model id")
    rep.add_argument("--title", help="report title")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Logs go to stderr: stdout is the stdio transport.
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.command == "serve":
        logging.getLogger("mcp").setLevel(logging.WARNING)
    try:
        return int(args.fn(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a refusal (ToolError: field, problem, fix) or a failure: one line, non-zero status
        logging.getLogger("mcp_interp").debug("%s failed", args.command, exc_info=True)
        sys.stderr.write(f"mcp-interp {args.command}: error: {type(e).__name__ + ': ' if _unexpected(e) else ''}"
                         f"{e}\n")
        return 1


def _unexpected(e: Exception) -> bool:
    from mcp.server.mcpserver.exceptions import ToolError  # what tools.errors raises, without importing the tools

    from ..artifacts.records import StoreError
    from ..runtime.cluster import ClusterError
    from .install import InstallError
    return not isinstance(e, (ToolError, InstallError, ClusterError, StoreError))


if __name__ == "__main__":
    sys.exit(main())
