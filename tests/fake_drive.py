"""A local stand-in for Google Drive, reached through an HTTPS proxy on 127.0.0.1 (test helper).

The download code runs unchanged with the real Drive URLs: the tests set ``HTTPS_PROXY`` to
this server and ``REQUESTS_CA_BUNDLE`` to a throw-away self-signed certificate for the Drive
host names (made with the ``openssl`` command line), so nothing leaves the machine. The
server answers ``CONNECT`` by terminating TLS itself and imitates Drive's flow for large
files:

1. ``https://drive.google.com/uc?id=ID``: an HTML "can't scan this file for viruses" page
   whose ``download-form`` points at ``drive.usercontent.google.com/download`` with the
   hidden ``id``, ``export``, ``confirm`` and ``uuid`` fields (what ``gdown`` parses);
2. ``https://drive.usercontent.google.com/download?id=ID&confirm=t&...``: the file, with
   ``Content-Disposition`` and ``Content-Length``.

``FakeDrive.plan[ID]`` lists how the next file requests end; an empty plan means "ok":

- "ok"; "truncate" (half the announced bytes, then the connection closes); "quota" (Drive's
  error page instead of the file); "stall" (half the bytes, the rest once ``FakeDrive.release``
  is set);
- hostile: "no_content_type" (no ``Content-Type`` header); "bad_date" (``Last-Modified: not a
  date``); "trickle" (a byte every ``TRICKLE_S``, for ``TRICKLE_FOR_S`` at most, then the
  connection closes); "huge" (a trickle announcing 1 TiB); "endless" (a chunked body of zeros);
  "gzip_bomb" (``Content-Encoding: gzip`` of zeros, ~1000x their compressed size). The endless
  bodies stop after ``HOSTILE_BYTES`` so that a client without limits still ends.

``FakeDrive.pages[ID]`` is the kind of every confirmation page of ID: "ok" (default),
"no_action" (the form has no ``action``), "no_name" (a hidden input has no ``name``), "loop"
(the form points back at the page itself; after ``MAX_LOOP`` requests the page is 404) or
"endless" (an HTML page without end).
"""

from __future__ import annotations

import functools
import gzip
import http.server
import os
import ssl
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator

HOSTS = ("drive.google.com", "drive.usercontent.google.com", "docs.google.com")
HOSTILE_BYTES = 64 << 20  # where the endless bodies end
TRICKLE_S = 0.1
TRICKLE_FOR_S = 10.0
MAX_LOOP = 100
_BLOCK = 64 << 10

_CONFIRM_PAGE = (
    "<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>\n"
    "<p class=\"uc-warning-caption\">Google Drive can't scan this file for viruses.</p>\n"
    '<form id="download-form" action="https://drive.usercontent.google.com/download" method="get">'
    '<input type="submit" value="Download anyway"/><input type="hidden" name="id" value="{id}">'
    '<input type="hidden" name="export" value="download"><input type="hidden" name="confirm" value="t">'
    '<input type="hidden" name="uuid" value="0f1e2d3c-0000-4000-8000-000000000000"></form>\n'
    "</body></html>\n"
)
_QUOTA_PAGE = (
    "<!DOCTYPE html><html><body>\n"
    '<p class="uc-error-subcaption">Too many users have viewed or downloaded this file recently.</p>\n'
    "</body></html>\n"
)


_PAGES = {
    "ok": _CONFIRM_PAGE,
    "no_action": _CONFIRM_PAGE.replace(' action="https://drive.usercontent.google.com/download"', ""),
    "no_name": _CONFIRM_PAGE.replace('<input type="hidden" name="id"', '<input type="hidden"'),
    "loop": _CONFIRM_PAGE.replace("https://drive.usercontent.google.com/download", "https://drive.google.com/uc"),
}


def _endless(first: bytes, fill: bytes) -> Iterator[bytes]:
    """``first``, then ``fill`` repeated up to ``HOSTILE_BYTES``, in blocks."""
    yield first
    for _ in range(HOSTILE_BYTES // _BLOCK):
        yield fill * _BLOCK


@functools.cache
def _gzip_bomb() -> bytes:
    return gzip.compress(bytes(HOSTILE_BYTES), compresslevel=9, mtime=0)


def make_certificate(folder: str) -> tuple[str, str]:
    """A self-signed certificate (and key) for the Drive host names; returns (cert, key) paths."""
    cert, key = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
    names = ",".join(f"DNS:{host}" for host in HOSTS)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "2",
         "-subj", "/CN=fake-drive", "-addext", f"subjectAltName={names}"],
        check=True, capture_output=True,
    )
    return cert, key


class FakeDrive:
    """The proxy server; ``files[id] = bytes``; ``requests`` logs every (host, path) served.

    ``plan`` and ``pages``: see the module docstring; ``release`` ends the "stall" responses.
    """

    def __init__(self, cert: str, key: str):
        self.files: dict[str, bytes] = {}
        self.plan: dict[str, list[str]] = {}
        self.pages: dict[str, str] = {}
        self.release = threading.Event()
        self.requests: list[tuple[str, str]] = []
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._tls.load_cert_chain(cert, key)
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _proxy_handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeDrive:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()


def _proxy_handler(drive: FakeDrive) -> type:
    class DriveHandler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        host = ""

        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def _send(self, status: int, body: bytes, content_type: str, extra: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def _start(self, headers: dict[str, str]) -> None:
            self.send_response(200)
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()

        def _send_chunked(self, blocks: Iterator[bytes], headers: dict[str, str]) -> None:
            self._start({**headers, "Transfer-Encoding": "chunked"})
            for block in blocks:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
            self.wfile.write(b"0\r\n\r\n")

        def _trickle(self) -> None:
            end = time.monotonic() + TRICKLE_FOR_S
            while time.monotonic() < end:
                self.wfile.write(b"\0")
                self.wfile.flush()
                time.sleep(TRICKLE_S)
            self.close_connection = True

        def _page(self, file_id: str) -> None:
            kind = drive.pages.get(file_id, "ok")
            if kind == "endless":
                self._send_chunked(_endless(b"<html><body><p>", b"a"), {"Content-Type": "text/html"})
            elif kind == "loop" and len(drive.requests) > MAX_LOOP:
                self._send(404, b"not found", "text/plain")
            else:
                self._send(200, _PAGES[kind].format(id=file_id).encode(), "text/html; charset=utf-8")

        def _file(self, file_id: str) -> None:
            plan = drive.plan.get(file_id) or []
            mode = plan.pop(0) if plan else "ok"
            data = drive.files[file_id]
            if mode == "quota":
                self._send(200, _QUOTA_PAGE.encode(), "text/html; charset=utf-8")
                return
            headers = {"Content-Type": "application/octet-stream",
                       "Content-Disposition": f'attachment; filename="{file_id}.pth"'}
            if mode == "endless":
                self._send_chunked(_endless(bytes(_BLOCK), b"\0"), headers)
                return
            if mode == "gzip_bomb":
                data = _gzip_bomb()
                headers["Content-Encoding"] = "gzip"
            if mode == "bad_date":
                headers["Last-Modified"] = "not a date"
            if mode == "no_content_type":
                del headers["Content-Type"]
            self._start({**headers, "Content-Length": str(1 << 40 if mode == "huge" else len(data))})
            if mode in ("trickle", "huge"):
                self._trickle()
                return
            if mode in ("truncate", "stall"):
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                if mode == "truncate" or not drive.release.wait(30):
                    self.close_connection = True
                    return
                data = data[len(data) // 2 :]
            self.wfile.write(data)

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(url.query)
            file_id = query.get("id", [""])[0]
            drive.requests.append((self.host, url.path))
            if self.host == "drive.google.com" and url.path == "/uc" and file_id in drive.files:
                self._page(file_id)
            elif self.host == "drive.usercontent.google.com" and url.path == "/download" and file_id in drive.files:
                self._file(file_id)
            else:
                self._send(404, b"not found", "text/plain")

    class ProxyHandler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_CONNECT(self) -> None:
            host = self.path.split(":")[0]
            if host not in HOSTS:  # anything else would be the outside network: refuse
                self.send_error(403)
                return
            self.send_response(200, "Connection established")
            self.end_headers()
            try:
                tls = drive._tls.wrap_socket(self.connection, server_side=True)
            except (ssl.SSLError, OSError):
                self.close_connection = True
                return
            handler = type("HostHandler", (DriveHandler,), {"host": host})
            try:
                handler(tls, self.client_address, self.server)
            except (ssl.SSLError, OSError):
                pass
            self.close_connection = True

    return ProxyHandler
