#!/usr/bin/env python3
"""Mock LLM upstream for lava integration tests.

Standard library only (runs with Debian 12's /usr/bin/python3).

Usage:
    python3 test/mock_upstream.py --port PORT [--host 127.0.0.1] [--pidfile F]
                                  [--tls-cert CERT.pem --tls-key KEY.pem]

With --tls-cert and --tls-key it speaks HTTPS (HTTP/1.1 over TLS) only.

Endpoints
---------
POST .../chat/completions   OpenAI chat.completions-shaped answer
POST .../messages           Anthropic messages-shaped answer
GET|POST|PUT|PATCH|DELETE any other path not starting with "/_":
                            200 {"ok":true,"path":..,"method":..,"echo":..}
GET  /_health               200 {"ok":true}
GET  /_log                  {"requests":[{"n","time","method","path","headers","body"}...]}
POST /_reset                clears the request log, the sequence number and
                            the #fail_times counters

Directives (tokens "#name=value" anywhere in the raw request body, decoded as
UTF-8; the first occurrence of each name wins):
    #in=N            usage input tokens   (default max(1, len(body)//8))
    #out=N           usage output tokens  (default 5)
    #text=WORD       reply text           (default "mock reply")
    #latency_ms=N    sleep N ms before answering (applies to every outcome)
    #status=N        answer HTTP status N (>= 400) with an error JSON body
    #retry_after=S   add "Retry-After: S" to error answers
    #fail_times=K    with #id=TOKEN: the first K requests carrying that id get
                     the #status answer (default 503); later ones succeed
    #id=TOKEN        key for #fail_times counters
    #garbage=1       200 with a non-JSON body ("this is not json")
    #no_usage=1      200 with a valid shape but no "usage" member
    #reset=1         headers with Content-Length: 1000, a few body bytes,
                     then an abortive close (RST)
    #hang=1          sleep 3600 s without answering (other requests unaffected)
"""

import argparse
import collections
import io
import json
import os
import re
import signal
import socket
import ssl
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOG_MAX = 100000

# "#name=value": value stops at whitespace, quotes, backslash (JSON escapes
# such as \n), '#', ',' and JSON brackets.
DIRECTIVE_RE = re.compile(r'#([A-Za-z_]+)=([^\s"\'\\#,{}\[\]]+)')


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.seq = 0
        self.log = collections.deque(maxlen=LOG_MAX)
        self.fail_counts = {}

    def record(self, entry):
        with self.lock:
            self.seq += 1
            entry["n"] = self.seq
            self.log.append(entry)
            return self.seq

    def snapshot(self):
        with self.lock:
            return list(self.log)

    def reset(self):
        with self.lock:
            self.seq = 0
            self.log.clear()
            self.fail_counts.clear()

    def bump_fail(self, key):
        """Increment the counter for key and return the new count."""
        with self.lock:
            c = self.fail_counts.get(key, 0) + 1
            self.fail_counts[key] = c
            return c


STATE = State()


def parse_directives(text):
    d = {}
    for m in DIRECTIVE_RE.finditer(text):
        name = m.group(1).lower()
        if name not in d:
            d[name] = m.group(2)
    return d


def d_int(d, name, default=None):
    v = d.get(name)
    if v is None:
        return default
    m = re.match(r"-?\d+", v)
    if not m:
        return default
    return int(m.group(0))


def d_float(d, name, default=None):
    v = d.get(name)
    if v is None:
        return default
    m = re.match(r"-?\d+(?:\.\d+)?", v)
    if not m:
        return default
    return float(m.group(0))


def d_flag(d, name):
    v = d.get(name)
    return v is not None and v.lower() not in ("0", "false", "no", "off")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "MockUpstream/1.0"

    def version_string(self):
        return self.server_version

    def setup(self):
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass

    # ---- helpers -------------------------------------------------------

    def _read_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            chunks = []
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    break
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    break
                if size == 0:
                    # trailers until blank line
                    while True:
                        t = self.rfile.readline(65537)
                        if not t or t in (b"\r\n", b"\n"):
                            break
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)  # CRLF after chunk
            return b"".join(chunks)
        cl = self.headers.get("Content-Length")
        if not cl:
            return b""
        try:
            n = int(cl)
        except ValueError:
            return b""
        if n <= 0:
            return b""
        return self.rfile.read(n)

    def _send(self, status, body, content_type="application/json", extra_headers=None):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode("utf-8")
        elif isinstance(body, str):
            body = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra_headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        # Headers and body in a single write (avoids Nagle/delayed-ACK stalls).
        self._headers_buffer.append(b"\r\n")
        if self.command != "HEAD":
            self._headers_buffer.append(body)
        self.flush_headers()

    def _abort_connection(self):
        """Close the TCP connection abortively (RST) right now."""
        sock = self.connection
        try:
            self.wfile.flush()
        except Exception:
            pass
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        for f in (self.wfile, self.rfile):
            try:
                f.close()
            except Exception:
                pass
        try:
            sock.close()
        except OSError:
            pass
        # The base class still flushes/closes these after we return.
        self.wfile = io.BytesIO()
        self.rfile = io.BytesIO()
        self.close_connection = True

    # ---- dispatch ------------------------------------------------------

    def do_GET(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_PUT(self):
        self._dispatch()

    def do_PATCH(self):
        self._dispatch()

    def do_DELETE(self):
        self._dispatch()

    def _dispatch(self):
        arrival = time.time()
        raw = self._read_body()
        path = self.path
        bare = path.split("?", 1)[0]

        if bare.startswith("/_"):
            self._control(bare)
            return

        text = raw.decode("utf-8", errors="replace")
        parsed = None
        if raw:
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = text

        headers = {}
        for k, v in self.headers.items():
            lk = k.lower()
            headers[lk] = headers[lk] + ", " + v if lk in headers else v

        n = STATE.record({
            "n": 0,  # filled in under the lock
            "time": arrival,
            "method": self.command,
            "path": path,
            "headers": headers,
            "body": parsed,
        })

        d = parse_directives(text)
        if bare.endswith("/chat/completions"):
            kind = "openai"
        elif bare.endswith("/messages"):
            kind = "anthropic"
        else:
            kind = "generic"
        if self.command != "POST" and kind != "generic":
            kind = "generic"

        latency = d_float(d, "latency_ms")
        if latency and latency > 0:
            time.sleep(latency / 1000.0)

        if d_flag(d, "hang"):
            time.sleep(3600)
            self.close_connection = True
            return

        if d_flag(d, "reset"):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "1000")
            self._headers_buffer.append(b"\r\n")
            self._headers_buffer.append(b'{"id":"partial-')
            self.flush_headers()
            self._abort_connection()
            return

        status = d_int(d, "status")
        fail_times = d_int(d, "fail_times")
        want_error = False
        if fail_times is not None:
            key = d.get("id", "")
            if STATE.bump_fail(key) <= fail_times:
                want_error = True
                if status is None or status < 400:
                    status = 503
        elif status is not None and status >= 400:
            want_error = True

        if want_error:
            extra = {}
            ra = d.get("retry_after")
            if ra is not None:
                extra["Retry-After"] = ra
            msg = "mock error %d" % status
            if kind == "anthropic":
                body = {"type": "error", "error": {"type": "mock", "message": msg}}
            else:
                body = {"error": {"message": msg, "type": "mock"}}
            self._send(status, body, extra_headers=extra)
            return

        if d_flag(d, "garbage"):
            self._send(200, b"this is not json")
            return

        if kind == "generic":
            self._send(200, {"ok": True, "path": path, "method": self.command,
                             "echo": parsed})
            return

        model = None
        if isinstance(parsed, dict):
            model = parsed.get("model")
        if model is None:
            model = "mock-model"
        in_tok = d_int(d, "in", max(1, len(raw) // 8))
        out_tok = d_int(d, "out", 5)
        reply = d.get("text", "mock reply")
        no_usage = d_flag(d, "no_usage")

        if kind == "openai":
            body = {
                "id": "chatcmpl-mock-%d" % n,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": reply},
                    "finish_reason": "stop",
                }],
            }
            if not no_usage:
                body["usage"] = {"prompt_tokens": in_tok,
                                 "completion_tokens": out_tok,
                                 "total_tokens": in_tok + out_tok}
        else:
            body = {
                "id": "msg_mock_%d" % n,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": reply}],
                "stop_reason": "end_turn",
            }
            if not no_usage:
                body["usage"] = {"input_tokens": in_tok, "output_tokens": out_tok}
        self._send(200, body)

    def _control(self, bare):
        if bare == "/_health":
            self._send(200, {"ok": True})
        elif bare == "/_log" and self.command == "GET":
            self._send(200, {"requests": STATE.snapshot()})
        elif bare == "/_reset" and self.command == "POST":
            STATE.reset()
            self._send(200, {"ok": True})
        else:
            self._send(404, {"error": {"message": "unknown control endpoint",
                                       "type": "mock"}})


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024
    tls = None  # an ssl.SSLContext when serving HTTPS

    def get_request(self):
        sock, addr = self.socket.accept()
        if self.tls is not None:
            # the handshake runs in the connection's own thread, on first read
            sock = self.tls.wrap_socket(sock, server_side=True,
                                        do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # resets, broken pipes, timeouts
            return
        super().handle_error(request, client_address)


def main():
    ap = argparse.ArgumentParser(description="mock LLM upstream for lava tests")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--pidfile")
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    args = ap.parse_args()

    try:
        httpd = Server((args.host, args.port), Handler)
    except OSError as e:
        print("mock upstream: cannot bind %s:%d: %s" % (args.host, args.port, e),
              file=sys.stderr)
        return 1
    if args.tls_cert:
        httpd.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        httpd.tls.load_cert_chain(args.tls_cert, args.tls_key)

    if args.pidfile:
        with open(args.pidfile, "w") as f:
            f.write("%d\n" % os.getpid())

    def stop(signum, frame):
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    host, port = httpd.server_address[:2]
    print("mock upstream listening on %s:%d%s" % (host, port, " (TLS)" if httpd.tls else ""),
          flush=True)
    try:
        httpd.serve_forever(poll_interval=0.2)
    finally:
        httpd.server_close()
        if args.pidfile:
            try:
                os.unlink(args.pidfile)
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
