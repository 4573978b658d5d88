"""`lmscope serve`: open the local web viewer over an atlas.

    lmscope serve atlas/                      # http://127.0.0.1:8765
    lmscope serve atlas/ --port 9000 --open   # and open a browser tab

Flags are generated from ServeConfig (lmscope/viewer/server.py).
"""

from __future__ import annotations

from ..config import add_arguments, from_args


def register(sub) -> None:
    from ..viewer.server import ServeConfig

    p = sub.add_parser(
        "serve",
        help="local web viewer: scan, feature pages, search, atlas overview, graphs, steering",
        description="Serve the atlas viewer on this machine (loopback only unless --host says "
        "otherwise). Pages: scan (brain map, per-token features), feature profiles, "
        "search (labels and features that fire on a text), atlas overview, attribution "
        "graphs (ATLAS/graphs/*.json, and new ones when the atlas has transcoders), steering.",
    )
    add_arguments(p, ServeConfig, positional=("atlas",))
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    import sys

    from ..read import Reader
    from ..viewer.server import ServeConfig, make_server

    cfg = from_args(ServeConfig, args)
    import torch

    torch.set_num_threads(cfg.threads)
    reader = Reader.open(
        cfg.atlas, model=cfg.model, device=cfg.device, hooks=cfg.hooks, max_tokens=cfg.max_tokens
    )
    server = make_server(
        reader,
        host=cfg.host,
        port=cfg.port,
        limits=cfg.limits(),
        verbose=cfg.verbose,
        allow_hosts=cfg.allow_host,
    )
    url = server.local_url()
    if server.token is not None:
        # Printed once, as Jupyter does: whoever has this URL can use the viewer.
        host, port = server.server_address[:2]
        if host not in ("0.0.0.0", "::", ""):
            url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
        url += f"?token={server.token}"
        print(
            f"warning: listening on {cfg.host}: anyone who can reach this machine and has the "
            "token in the URL below can use the viewer (plain HTTP: use it only on a network you "
            "trust, or behind an HTTPS proxy; see docs/security.md)",
            file=sys.stderr,
        )
    print(f"lmscope viewer for {cfg.atlas} at {url}  (Ctrl-C to stop)", flush=True)
    if cfg.open:
        import webbrowser

        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
