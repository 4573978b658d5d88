"""`lmscope serve`: open the local web viewer over an atlas.

    lmscope serve atlas/                      # http://127.0.0.1:8765
    lmscope serve atlas/ --port 9000 --open   # and open a browser tab
"""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "serve", help="local web viewer: scan, feature pages, search, atlas overview, graphs, steering",
        description="Serve the atlas viewer on this machine (loopback only unless --host says "
                    "otherwise). Pages: scan (brain map, per-token features), feature profiles, "
                    "search (labels and features that fire on a text), atlas overview, attribution "
                    "graphs (ATLAS/graphs/*.json, and new ones when the atlas has transcoders), steering.")
    p.add_argument("atlas", help="atlas folder")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default: 127.0.0.1; 0.0.0.0 exposes the viewer to your network)")
    p.add_argument("--port", type=int, default=8765, help="port (default: 8765; 0 picks a free one)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also accept this name in the Host header (repeatable; loopback names are always "
                        "accepted, any other name is refused as DNS rebinding; '*' accepts any, only "
                        "behind a proxy that checks it)")
    p.add_argument("--open", action="store_true", help="open the viewer in the default browser")
    p.add_argument("--max-tokens", type=int, default=256, help="longest prompt accepted, in tokens (default: 256)")
    p.add_argument("--max-body-kb", type=int, default=64, help="largest request body in KiB (default: 64)")
    p.add_argument("--max-generate", type=int, default=64,
                   help="most new tokens the steer page generates per request (default: 64)")
    p.add_argument("--max-graph-tokens", type=int, default=32,
                   help="longest prompt, in tokens, the graph page builds a graph for (default: 32)")
    p.add_argument("--hooks", default=None, help="only these dictionaries (names or globs, comma-separated)")
    p.add_argument("--model", default=None, help="override the atlas's model (same architecture)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads per scan (default: 1; on a shared CPU, 2+ threads stall in "
                        "OpenMP barriers: measured 0.37 s vs 2.5-13 s per 64-token scan at load 12 on 2 cores; "
                        "raise it for large models on an idle machine)")
    p.add_argument("--verbose", action="store_true", help="log every request")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    import sys

    from ..errors import UserError
    from ..read import Reader
    from ..viewer.server import Limits, make_server

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, got {args.port}")
    if min(args.max_tokens, args.max_body_kb, args.threads, args.max_graph_tokens) < 1 or args.max_generate < 0:
        raise UserError("--max-tokens, --max-body-kb, --threads and --max-graph-tokens must be >= 1, "
                        "--max-generate >= 0")
    import torch

    torch.set_num_threads(args.threads)
    reader = Reader.open(args.atlas, model=args.model, device=args.device, hooks=args.hooks,
                         max_tokens=args.max_tokens)
    server = make_server(reader, host=args.host, port=args.port,
                         limits=Limits(max_body_bytes=args.max_body_kb * 1024, max_generate=args.max_generate,
                                       max_graph_tokens=args.max_graph_tokens), verbose=args.verbose,
                         allow_hosts=tuple(args.allow_host))
    url = server.local_url()
    if server.token is not None:
        # Printed once, as Jupyter does: whoever has this URL can use the viewer.
        host, port = server.server_address[:2]
        if host not in ("0.0.0.0", "::", ""):
            url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
        url += f"?token={server.token}"
        print(f"warning: listening on {args.host}: anyone who can reach this machine and has the "
              "token in the URL below can use the viewer (plain HTTP: use it only on a network you "
              "trust, or behind an HTTPS proxy; see docs/security.md)", file=sys.stderr)
    print(f"lmscope viewer for {args.atlas} at {url}  (Ctrl-C to stop)", flush=True)
    if args.open:
        import webbrowser

        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
