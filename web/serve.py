#!/usr/bin/env python3
"""Serve the fan-edge web page (this folder) for a browser: Python's standard library only, no fan-edge.

    python3 web/serve.py                        # http://127.0.0.1:8000/
    python3 web/serve.py --models exports/      # and exports/*.onnx at /models/, e.g. ?model=models/x.onnx
    python3 web/serve.py --host 0.0.0.0 --port 8080

What it adds to ``python -m http.server -d web``: the two headers that make the page cross-origin isolated
(``Cross-Origin-Opener-Policy: same-origin`` and ``Cross-Origin-Embedder-Policy: require-corp``), without which
a browser gives WebAssembly no shared memory and onnxruntime-web runs on one thread; the right MIME types for
``.mjs`` and ``.wasm``; and an optional folder of models at ``/models/``. Webcam pages need a secure context:
``localhost``/``127.0.0.1`` is one, any other host needs HTTPS.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import posixpath
import sys
import threading
import urllib.parse
from pathlib import Path

WEB_DIR = Path(__file__).resolve().parent
MODELS_PREFIX = "/models/"


class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".mjs": "text/javascript",
        ".js": "text/javascript",
        ".wasm": "application/wasm",
        ".onnx": "application/octet-stream",
        ".json": "application/json",
    }

    def __init__(self, *args, models: Path | None = None, quiet: bool = False, **kwargs):
        self.models = models
        self.quiet = quiet
        super().__init__(*args, **kwargs)

    def translate_path(self, path: str) -> str:
        clean = urllib.parse.unquote(urllib.parse.urlsplit(path).path)
        if self.models is not None and clean.startswith(MODELS_PREFIX):
            parts = [p for p in posixpath.normpath(clean[len(MODELS_PREFIX):]).split("/") if p not in ("", ".", "..")]
            return os.path.join(self.models, *parts)
        return super().translate_path(path)

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        if not self.quiet:
            super().log_message(format, *args)


def make_server(host: str = "127.0.0.1", port: int = 8000, models: str | os.PathLike[str] | None = None,
                quiet: bool = False) -> http.server.ThreadingHTTPServer:
    """A server for the page (port 0: any free port; ``server.server_address`` says which)."""
    handler = functools.partial(Handler, directory=str(WEB_DIR), models=Path(models).resolve() if models else None, quiet=quiet)
    return http.server.ThreadingHTTPServer((host, port), handler)


def serve_in_thread(**kwargs) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Start a server on a daemon thread; returns it and its base URL. ``server.shutdown()`` stops it."""
    server = make_server(**kwargs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    return server, f"http://{host}:{port}/"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--models", help="a folder served at /models/ (open ?model=models/NAME.onnx)")
    args = parser.parse_args(argv)
    if not (WEB_DIR / "node_modules" / "onnxruntime-web").is_dir():
        print(f"onnxruntime-web is not installed: run `npm ci --prefix {WEB_DIR}` first", file=sys.stderr)
        return 1
    server = make_server(args.host, args.port, args.models)
    host, port = server.server_address[:2]
    print(f"fan-edge web page on http://{host}:{port}/" + (f" (models from {args.models} at /models/)" if args.models else ""),
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
