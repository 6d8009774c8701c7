"""A fake Google Cloud Storage endpoint on 127.0.0.1 (the JSON API's listing and media downloads).

Serves ``objects`` ({bucket: {name: bytes}}) as Cloud Storage does for public buckets:
``GET /storage/v1/b/BUCKET/o?prefix=P[&pageToken=T]`` -> JSON ``{"items": [...], "nextPageToken"}``
(``page_size`` items a page) with name, size, md5Hash (base64) and generation; ``GET
/storage/v1/b/BUCKET/o/NAME?alt=media`` -> the bytes, with Range support. ``private`` buckets answer
403, unknown ones 404. ``log`` keeps every request path. Point lowps at it with
``STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT``.
"""
from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse


class FakeGCS:
    def __init__(self, page_size: int = 3) -> None:
        self.objects: dict[str, dict[str, bytes]] = {}
        self.private: set[str] = set()
        self.corrupt: set[str] = set()  # object names served with a flipped byte (md5 then mismatches)
        self.page_size = page_size
        self.log: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _json(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802
                server.log.append(self.path)
                url = urlparse(self.path)
                q = parse_qs(url.query)
                parts = url.path.split("/")
                # /storage/v1/b/{bucket}/o[/{object}]
                if len(parts) < 6 or parts[1:4] != ["storage", "v1", "b"] or parts[5] != "o":
                    return self._json(404, {"error": {"code": 404, "message": "Not Found"}})
                bucket = unquote(parts[4])
                if bucket in server.private:
                    return self._json(403, {"error": {"code": 403, "message": "Forbidden"}})
                if bucket not in server.objects:
                    return self._json(404, {"error": {"code": 404, "message": "The specified bucket does not exist."}})
                objs = server.objects[bucket]
                if len(parts) == 6:
                    prefix = q.get("prefix", [""])[0]
                    names = sorted(n for n in objs if n.startswith(prefix))
                    start = int(q.get("pageToken", ["0"])[0])
                    page = names[start:start + server.page_size]
                    body: dict = {"kind": "storage#objects", "items": [
                        {"name": n, "size": str(len(objs[n])), "generation": "1700000000000001",
                         "md5Hash": base64.b64encode(hashlib.md5(objs[n]).digest()).decode()} for n in page]}
                    if start + server.page_size < len(names):
                        body["nextPageToken"] = str(start + server.page_size)
                    return self._json(200, body)
                name = unquote("/".join(parts[6:]))
                if name not in objs or q.get("alt") != ["media"]:
                    return self._json(404, {"error": {"code": 404, "message": "No such object"}})
                data = objs[name]
                if name in server.corrupt:
                    data = bytes([data[0] ^ 1]) + data[1:]
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                self.wfile.write(data[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeGCS:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
