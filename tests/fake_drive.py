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

``FakeDrive.plan[ID]`` lists how the next file requests end: "ok", "truncate" (half the
announced bytes, then the connection closes) or "quota" (Drive's error page instead of the
file); an empty plan means "ok".
"""

from __future__ import annotations

import http.server
import os
import ssl
import subprocess
import threading
import urllib.parse

HOSTS = ("drive.google.com", "drive.usercontent.google.com", "docs.google.com")

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
    """The proxy server; ``files[id] = bytes``; ``requests`` logs every (host, path) served."""

    def __init__(self, cert: str, key: str):
        self.files: dict[str, bytes] = {}
        self.plan: dict[str, list[str]] = {}
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

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(url.query)
            file_id = query.get("id", [""])[0]
            drive.requests.append((self.host, url.path))
            if self.host == "drive.google.com" and url.path == "/uc" and file_id in drive.files:
                self._send(200, _CONFIRM_PAGE.format(id=file_id).encode(), "text/html; charset=utf-8")
                return
            if self.host == "drive.usercontent.google.com" and url.path == "/download" and file_id in drive.files:
                plan = drive.plan.get(file_id) or []
                mode = plan.pop(0) if plan else "ok"
                data = drive.files[file_id]
                if mode == "quota":
                    self._send(200, _QUOTA_PAGE.encode(), "text/html; charset=utf-8")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Disposition", f'attachment; filename="{file_id}.pth"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if mode == "truncate":
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(data)
                return
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
