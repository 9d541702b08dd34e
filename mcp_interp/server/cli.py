"""`mcp-interp` command line: serve (stdio or HTTP), demo, doctor, report."""

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
    from .app import build_server
    roots = None
    if args.http:  # a shared server: local model paths only under these roots (files elsewhere stay private)
        from ..models.loaders import default_cache_dir
        roots = [Path.cwd(), default_cache_dir(), *(Path(r) for r in args.model_root or [])]
    server = build_server(args.store, args.memory_budget_mb, args.device, model_roots=roots)
    if not args.http:
        server.run("stdio")
        return 0
    from mcp.server.transport_security import TransportSecuritySettings
    local = args.host in ("127.0.0.1", "localhost", "::1")
    token = os.environ.get("MCP_INTERP_TOKEN")
    if not local and not token:
        sys.stderr.write("Refusing to bind to a non-loopback address without a token: set MCP_INTERP_TOKEN "
                         "(clients send it as 'Authorization: Bearer <token>'), or use --host 127.0.0.1.\n")
        return 2
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mcp-interp", description="MCP server for mechanistic interpretability.")
    parser.add_argument("--store", default=None, help="artifact store directory (default $MCP_INTERP_STORE or ./artifacts)")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the MCP server (stdio by default)")
    s.add_argument("--http", action="store_true", help="streamable HTTP instead of stdio")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8765)
    s.add_argument("--allowed-host", action="append", metavar="NAME[:PORT]",
                   help="also accept this Host header (repeatable); bound to 0.0.0.0 the machine's names and "
                   "addresses are accepted already")
    s.add_argument("--model-root", action="append", metavar="DIR",
                   help="over HTTP, hf:/gguf: models are read only under the current directory, the model cache "
                   "and these directories (repeatable)")
    s.add_argument("--memory-budget-mb", type=float, default=None, help="model pool budget (LRU eviction)")
    s.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    s.set_defaults(fn=_serve)
    d = sub.add_parser("demo", help="run the research loop on the bundled model through a real MCP client")
    d.add_argument("--model", default="smollm2-135m")
    d.add_argument("--n", type=int, default=16)
    d.set_defaults(fn=_demo)
    doc = sub.add_parser("doctor", help="versions, device, bundled model, store")
    doc.add_argument("--load", action="store_true", help="also load the bundled model and time it")
    doc.set_defaults(fn=_doctor)
    r = sub.add_parser("report", help="assemble a report (markdown + self-contained HTML) from stored runs")
    r.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="runs to report on (or --task and --model)")
    r.add_argument("--task", help="with --model: the newest complete run of each tool for this task")
    r.add_argument("--model", help="with --task: the model id")
    r.add_argument("--title", help="report title")
    r.set_defaults(fn=_report)
    args = parser.parse_args(argv)
    # Logs go to stderr: stdout is the stdio transport.
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.command == "serve":
        logging.getLogger("mcp").setLevel(logging.WARNING)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
