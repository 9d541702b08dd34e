"""`mcp-interp` command line: serve (stdio or HTTP), demo, doctor."""

from __future__ import annotations

import argparse
import logging
import os
import sys


def _serve(args: argparse.Namespace) -> int:
    from .app import build_server
    server = build_server(args.store, args.memory_budget_mb, args.device)
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
    hosts = [f"{args.host}:{args.port}", f"127.0.0.1:{args.port}", f"localhost:{args.port}"]
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mcp-interp", description="MCP server for mechanistic interpretability.")
    parser.add_argument("--store", default=None, help="artifact store directory (default $MCP_INTERP_STORE or ./artifacts)")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the MCP server (stdio by default)")
    s.add_argument("--http", action="store_true", help="streamable HTTP instead of stdio")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8765)
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
    args = parser.parse_args(argv)
    # Logs go to stderr: stdout is the stdio transport.
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.command == "serve":
        logging.getLogger("mcp").setLevel(logging.WARNING)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
