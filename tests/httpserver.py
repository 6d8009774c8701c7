"""A small HTTP server on 127.0.0.1 for download tests: Range support, injected failures, request log."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FileServer:
    """Serves ``files`` (path -> bytes). ``drop_after[path] = (nbytes, times)`` closes the connection
    after ``nbytes`` for the next ``times`` requests of ``path``. ``log`` keeps (path, Range header)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.drop_after: dict[str, list[int]] = {}
        self.trickle: dict[str, float] = {}  # path -> seconds between 1-byte writes
        self.redirect: dict[str, str] = {}  # path -> Location of a 302
        self.log: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):  # noqa: N802
                with server.lock:
                    server.log.append((self.path, self.headers.get("Range")))
                if self.path in server.redirect:
                    self.send_response(302)
                    self.send_header("Location", server.redirect[self.path])
                    self.end_headers()
                    return
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if self.path in server.trickle:
                    import time
                    try:
                        for i in range(min(len(body), 200)):  # bounded: a test server must stop by itself
                            self.wfile.write(body[i:i + 1])
                            self.wfile.flush()
                            time.sleep(server.trickle[self.path])
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    self.close_connection = True
                    return
                drop = server.drop_after.get(self.path)
                if drop and drop[1] > 0:
                    drop[1] -= 1
                    self.wfile.write(body[:drop[0]])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
