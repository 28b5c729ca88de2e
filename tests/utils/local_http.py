"""A real HTTP server on 127.0.0.1 for tests: answers GETs and POSTs from a routes
table (a route may be a list of answers, taken in turn, the last one repeated),
honours Range requests on 200 routes, can delay an answer or cut the next
one short (a broken download), and records every request."""
from __future__ import annotations

import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Route = tuple[int, dict, bytes]  # status, headers ("delay": seconds to wait first), body


class LocalServer:
    def __init__(self, routes: dict[str, Route] | None = None):
        self.routes: dict[str, Route | list[Route]] = dict(routes or {})
        self.cut_next_after: int | None = None
        self.hits: list[tuple[str, str | None]] = []  # (path, Host header)
        self.ranges: list[tuple[str, str | None]] = []  # (path, Range header)
        self.headers: list[tuple[str, dict[str, str]]] = []  # (path, every header, names lower-case)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.do_GET()

            def do_GET(self):
                server.hits.append((self.path, self.headers.get("Host")))
                server.ranges.append((self.path, self.headers.get("Range")))
                server.headers.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                status, headers, body = server.answer(self.path)
                headers = dict(headers)
                time.sleep(float(headers.pop("delay", 0)))
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if status == 200 and match:
                    start = int(match.group(1))
                    if start >= len(body):
                        self.send_response(416)
                        self.end_headers()
                        return
                    status = 206
                    headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
                    body = body[start:]
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_next_after is not None:
                    body, server.cut_next_after = body[:server.cut_next_after], None
                    self.close_connection = True
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def answer(self, path: str) -> Route:
        route = self.routes.get(path, (404, {}, b"not found"))
        if isinstance(route, list):
            return route.pop(0) if len(route) > 1 else route[0]
        return route

    def add(self, path: str, body: bytes, content_type: str = "application/octet-stream") -> str:
        self.routes[path] = (200, {"Content-Type": content_type}, body)
        return self.base + path

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
