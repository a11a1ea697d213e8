"""A test server never attaches to another process's server (parallel runs share the port space).

A stand-in server (a few lines of http.server answering /system_stats with someone else's argv)
holds a port; ComfyServer must notice that the answer is not its own process, and either fail with a
clear message (fixed port) or move to another free port (automatic port).
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import requests

import comfy_client
from comfy_client import ComfyServer

pytestmark = pytest.mark.host


class _Other(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        body = json.dumps({"system": {"argv": ["main.py", "--output-directory", "/somebody/else/output"]}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def other_server():
    httpd = HTTPServer(("127.0.0.1", 0), _Other)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_fixed_port_held_by_another_server_is_refused(other_server, tmp_path):
    srv = ComfyServer(port=other_server, workdir=tmp_path)
    with pytest.raises(RuntimeError, match="taken by another process"):
        srv.start(timeout=120)
    assert not srv.alive()  # our process was stopped; the other server still answers
    assert requests.get(f"http://127.0.0.1:{other_server}/system_stats", timeout=5).ok


def test_automatic_port_moves_on_when_another_server_holds_it(other_server, tmp_path, monkeypatch):
    real = comfy_client.free_port
    ports = iter([other_server])
    monkeypatch.setattr(comfy_client, "free_port", lambda: next(ports, None) or real())
    srv = ComfyServer(workdir=tmp_path).start(timeout=240)
    try:
        assert srv.port != other_server
        stats = srv.client().get("/system_stats").json()
        assert str(tmp_path / "output") in stats["system"]["argv"]
    finally:
        srv.stop()
