"""A real HTTP server on 127.0.0.1 for tests: fixed routes for every fetch edge case, plus any bytes
you register. Threaded (`http.server.ThreadingHTTPServer`), HTTP/1.1 keep-alive, random free port.

    with LocalServer() as server:
        server.add("/cat.jpg", jpeg_bytes, "image/jpeg")
        url = server.url("/cat.jpg")
        ...
        assert server.hits("/cat.jpg") == 1

Built-in routes (query parameters in brackets):
- `/status/<code>`                    that status with a short body
- `/flaky/<name>?fail=N[&code=503]`   `code` for the first N requests of that name, then the image
- `/slow[?s=SECONDS]`                 sleeps, then serves the image (for timeouts)
- `/redirect/<n>`                     a chain: 302 to /redirect/<n-1>, …, /redirect/0 serves the image
- `/redirect-to?url=URL[&code=302]`   one redirect to any URL (e.g. http://10.0.0.1/)
- `/big?bytes=N[&length=0]`           N bytes of a valid JPEG prefix + padding; length=0 omits
                                      Content-Length (chunked) so only the streaming cap can stop it
- `/html-as-image`                    an HTML page sent as `Content-Type: image/jpeg`
- `/noai`, `/noimageai`               the image with `X-Robots-Tag: noai` / `noimageai`
- `/image.jpg`                        the default image (a drawn 320×240 JPEG)
Every response waits `latency_s` first (the benchmark's simulated network latency).
"""

from __future__ import annotations

import io
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

from PIL import Image, ImageDraw


def drawn_image(
    width: int = 320, height: int = 240, fmt: str = "JPEG", seed: int = 0, quality: int = 90
) -> bytes:
    """A deterministic non-uniform picture (stripes and a circle whose colours depend on `seed`)."""
    im = Image.new("RGB", (width, height), ((seed * 37) % 256, 60, 90))
    draw = ImageDraw.Draw(im)
    for x in range(-height, width, 10 + seed % 7):
        draw.line([(x, 0), (x + height, height)], fill=(220, (seed * 53) % 256, 40), width=3)
    draw.ellipse(
        [width // 4, height // 4, 3 * width // 4, 3 * height // 4],
        fill=(200, 20, (seed * 91) % 256),
    )
    out = io.BytesIO()
    im.save(out, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return out.getvalue()


class LocalServer:
    """Threaded HTTP server on 127.0.0.1; a context manager that always shuts down."""

    def __init__(self, latency_s: float = 0.0) -> None:
        self.latency_s = latency_s
        self.image = drawn_image()
        self.routes: dict[str, tuple[bytes, str, dict[str, str]]] = {}
        self.requests: Counter[str] = Counter()
        self.headers: dict[str, dict[str, str]] = {}  # last request headers per path
        self.inflight = 0
        self.max_inflight = 0  # the most requests handled at once (checks the client's limits)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def add(
        self,
        path: str,
        body: bytes,
        content_type: str = "application/octet-stream",
        headers: dict[str, str] | None = None,
    ) -> str:
        """Serve `body` at `path`; returns its URL."""
        self.routes[path] = (body, content_type, headers or {})
        return self.url(path)

    def hits(self, path: str) -> int:
        with self._lock:
            return self.requests[path]

    def _enter(self, path: str, headers: dict[str, str]) -> int:
        with self._lock:
            self.requests[path] += 1
            self.headers[path] = headers
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
            return self.requests[path]

    def _leave(self) -> None:
        with self._lock:
            self.inflight -= 1

    def __enter__(self) -> LocalServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _make_handler(server: LocalServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like real servers; needs Content-Length
        server_version = "m3w-test"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
            pass  # quiet: pytest shows failures, not access logs

        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            parts = urlsplit(self.path)
            path, query = parts.path, {k: v[-1] for k, v in parse_qs(parts.query).items()}
            n = server._enter(path, dict(self.headers))
            try:
                if server.latency_s:
                    time.sleep(server.latency_s)
                self._route(path, query, n)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeouts, byte caps): expected in these tests
            finally:
                server._leave()

        def _route(self, path: str, query: dict[str, str], n: int) -> None:
            if path in server.routes:
                body, ctype, headers = server.routes[path]
                return self._send(200, body, ctype, headers)
            head, _, rest = path.lstrip("/").partition("/")
            if path == "/image.jpg":
                return self._send(200, server.image, "image/jpeg")
            if head == "status":
                return self._send(int(rest), b"status " + rest.encode(), "text/plain")
            if head == "flaky":
                if n <= int(query.get("fail", "1")):
                    return self._send(int(query.get("code", "503")), b"try later", "text/plain")
                return self._send(200, server.image, "image/jpeg")
            if head == "slow":
                time.sleep(float(query.get("s", "2")))
                return self._send(200, server.image, "image/jpeg")
            if head == "redirect":
                left = int(rest or "0")
                if left <= 0:
                    return self._send(200, server.image, "image/jpeg")
                return self._send(302, b"", "text/plain", {"Location": f"/redirect/{left - 1}"})
            if head == "redirect-to":
                code = int(query.get("code", "302"))
                return self._send(code, b"", "text/plain", {"Location": query["url"]})
            if head == "big":
                return self._send_big(int(query["bytes"]), query.get("length", "1") != "0")
            if head == "html-as-image":
                page = b"<!doctype html><html><body>Not found, sorry</body></html>"
                return self._send(200, page, "image/jpeg")
            if head in ("noai", "noimageai"):
                return self._send(200, server.image, "image/jpeg", {"X-Robots-Tag": head})
            return self._send(404, b"not found", "text/plain")

        def _send(
            self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def _send_big(self, size: int, with_length: bool) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            if with_length:
                self.send_header("Content-Length", str(size))
            else:
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"\xff\xd8\xff\xe0" + b"\x00" * (64 * 1024 - 4)
            sent = 0
            while sent < size:
                piece = chunk[: min(len(chunk), size - sent)]
                if with_length:
                    self.wfile.write(piece)
                else:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
            if not with_length:
                self.wfile.write(b"0\r\n\r\n")

    return Handler
