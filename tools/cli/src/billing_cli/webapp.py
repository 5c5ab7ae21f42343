"""The local stack's web server for the Credits page: ``python -m billing_cli.webapp``.

It serves the built app (``web/dist``) with every unknown path answered by ``index.html``
(the app routes ``/credits`` and ``/credits/admin`` itself), and ``/config.json``: where the
services are, and the links the page shows. A deployment serves the same files from its
own web server or CDN with its own ``config.json``.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
from collections.abc import Mapping
from functools import partial
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

# Hashed asset names never change content: cache them for good; index.html never.
_IMMUTABLE = "public, max-age=31536000, immutable"


def content_security_policy(config: Mapping[str, object]) -> str:
    """Scripts and styles from this origin only; API calls to the configured services only."""
    origins = sorted(
        {
            f"{u.scheme}://{u.netloc}"
            for key, value in config.items()
            if key.endswith("Url") and isinstance(value, str) and value.startswith("http")
            for u in [urlsplit(value)]
            if key in {"checkoutUrl", "ledgerUrl", "meteringUrl", "reconcilerUrl"}
        }
    )
    connect = " ".join(["'self'", *origins])
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        f" connect-src {connect}; frame-ancestors 'self'; base-uri 'none'; form-action 'self'"
    )


class Handler(BaseHTTPRequestHandler):
    server_version = "billing-web"

    def __init__(self, *args: object, dist: Path, config: bytes, csp: str) -> None:
        self.dist = dist
        self.config = config
        self.csp = csp
        super().__init__(*args)  # type: ignore[arg-type]

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/config.json":
            self._send(HTTPStatus.OK, self.config, "application/json", "no-store")
            return
        file = self._file(path)
        if file is None:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain", "no-store")
            return
        kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        cache = _IMMUTABLE if file.parent.name == "assets" else "no-cache"
        self._send(HTTPStatus.OK, file.read_bytes(), kind, cache)

    def _file(self, path: str) -> Path | None:
        """The file under dist for ``path``; index.html for an app route; None otherwise."""
        candidate = (self.dist / path.lstrip("/")).resolve()
        inside = candidate.is_relative_to(self.dist)
        if inside and candidate.is_file():
            return candidate
        # An asset that is missing is a real 404, not the app's page.
        if path.startswith("/assets/") or "." in path.rsplit("/", 1)[-1]:
            return None
        index = self.dist / "index.html"
        return index if index.is_file() else None

    def _send(self, status: HTTPStatus, body: bytes, kind: str, cache: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.send_header("Content-Security-Policy", self.csp)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "same-origin")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None


def serve(dist: Path, config: dict[str, object], port: int, host: str = "127.0.0.1") -> None:
    handler = partial(
        Handler,
        dist=dist.resolve(),
        config=json.dumps(config).encode(),
        csp=content_security_policy(config),
    )
    ThreadingHTTPServer((host, port), handler).serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dist", type=Path, required=True)
    parser.add_argument("--config", type=Path, required=True, help="the config.json to serve")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    serve(args.dist, json.loads(args.config.read_text()), args.port)


if __name__ == "__main__":
    main()
