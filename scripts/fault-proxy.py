#!/usr/bin/env python3
"""An HTTP proxy in front of the local S3 server that injects faults by rule,
for tailor's retry tests: what a real S3 does on a bad day (503 SlowDown, a
connection reset, a body cut short, a slow answer), at the HTTP level, where
object_store's retries see it.

    fault-proxy.py --port 29103 --upstream http://127.0.0.1:29100

Rules are added by the tests:

    POST /__faults__/rules   [{"method": "GET", "path": "<substring>", "times": 2,
                               "action": "503" | "reset" | "short" | "delay:<ms>"}, ...]
    GET  /__faults__/stats   {"injected": <n>, "rules": [{..., "left": <n>}, ...]}

A rule applies to the first `times` requests whose method matches and whose
(percent-decoded) path contains `path`; other requests pass through untouched.
Only the standard library: the proxy is a test fixture, started by
scripts/test-servers.sh on 127.0.0.1.
"""

import argparse
import http.client
import json
import socket
import struct
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RULES = []
INJECTED = 0
LOCK = threading.Lock()
UPSTREAM = ("127.0.0.1", 29100)
HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}
SLOW_DOWN = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
             b"<Message>Please reduce your request rate.</Message></Error>")


def take_rule(method, path):
    global INJECTED
    with LOCK:
        for r in RULES:
            if r["left"] > 0 and r.get("method", method) == method and r.get("path", "") in path:
                r["left"] -= 1
                INJECTED += 1
                return r["action"]
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet
        pass

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def control(self):
        global INJECTED
        if self.command == "POST" and self.path.startswith("/__faults__/rules"):
            rules = json.loads(self.body() or b"[]")
            with LOCK:
                for r in rules:
                    r["left"] = int(r.get("times", 1))
                    RULES.append(r)
            out = b"{}"
        elif self.path.startswith("/__faults__/stats"):
            self.body()
            with LOCK:
                out = json.dumps({"injected": INJECTED, "rules": RULES}).encode()
        else:
            self.body()
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def reset(self):
        # SO_LINGER 0: close() sends a TCP RST, as a dropped connection does.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def forward(self, body):
        conn = http.client.HTTPConnection(*UPSTREAM, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp, data

    def handle_one(self):
        if self.path.startswith("/__faults__"):
            return self.control()
        body = self.body()
        action = take_rule(self.command, urllib.parse.unquote(self.path))
        if action == "503":
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(SLOW_DOWN)))
            self.end_headers()
            self.wfile.write(SLOW_DOWN)
            return
        if action == "reset":
            return self.reset()
        if action and action.startswith("delay:"):
            time.sleep(int(action.split(":", 1)[1]) / 1000)
        resp, data = self.forward(body)
        self.send_response(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in HOP and k.lower() != "content-length":
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if action == "short" and len(data) > 1:
            # The headers promise the whole body; half of it arrives.
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            return self.reset()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_one


def main():
    global UPSTREAM
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", default="http://127.0.0.1:29100")
    a = ap.parse_args()
    u = urllib.parse.urlparse(a.upstream)
    UPSTREAM = (u.hostname, u.port or 80)
    server = ThreadingHTTPServer((a.host, a.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
