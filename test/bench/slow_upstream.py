#!/usr/bin/env python3
"""A fast-to-serve, slow-to-answer LLM upstream for lava's benchmarks.

Standard library only (asyncio).  It keeps thousands of concurrent
keep-alive HTTP/1.1 connections and answers every POST with a fixed
OpenAI chat.completions JSON (with usage) after --delay seconds, without
holding a thread per request, so that a 1 s upstream can be driven at
hundreds of requests in flight.

Usage:
    python3 test/bench/slow_upstream.py --port PORT [--delay 1.0]
                                        [--pidfile F] [--host 127.0.0.1]

Directives, looked for in the raw request body:
    #fast            answer at once (no delay)
    #latency_ms=N    answer after N ms instead of --delay
    #status=N        answer HTTP N (an error JSON body) instead of 200
    #retry_after=S   add Retry-After: S to such an error answer
    #garbage=1       200 with a body that is not JSON
    #no_usage=1      200 chat.completions JSON without "usage"

GET /_health answers 200 at once; GET /_stats gives the counts served.
"""

import argparse
import asyncio
import json
import os
import re
import resource
import signal
import socket
import sys

DIRECTIVE_RE = re.compile(rb'#([a-z_]+)=([0-9A-Za-z.]+)')

OK_BODY = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": "bench-model",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "bench reply"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
}, separators=(",", ":")).encode()
NO_USAGE_BODY = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": "bench-model",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "bench reply"}, "finish_reason": "stop"}],
}, separators=(",", ":")).encode()

STATS = {"requests": 0, "open_connections": 0, "max_open_connections": 0, "in_flight": 0, "max_in_flight": 0}
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests",
           500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


def response(status, body, extra=b""):
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
            % (status, REASONS.get(status, "Status").encode(), len(body), extra)) + body


async def read_body(reader, headers):
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        parts = []
        while True:
            line = await reader.readline()
            if not line:
                raise ConnectionError("eof in chunked body")
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readline()
    n = int(headers.get(b"content-length", b"0") or 0)
    return await reader.readexactly(n) if n > 0 else b""


async def answer(body, delay):
    d = {}
    for m in DIRECTIVE_RE.finditer(body):
        d.setdefault(m.group(1).decode(), m.group(2).decode())
    if b"#fast" in body:
        wait = 0.0
    elif "latency_ms" in d:
        wait = float(d["latency_ms"]) / 1000.0
    else:
        wait = delay
    if wait > 0:
        await asyncio.sleep(wait)
    if "status" in d and d["status"] != "200":
        status = int(d["status"])
        extra = b"Retry-After: %s\r\n" % d["retry_after"].encode() if "retry_after" in d else b""
        err = json.dumps({"error": {"message": "bench upstream error %d" % status, "type": "bench"}}).encode()
        return response(status, err, extra)
    if d.get("garbage", "0") not in ("0", ""):
        return response(200, b"this is not json")
    if d.get("no_usage", "0") not in ("0", ""):
        return response(200, NO_USAGE_BODY)
    return response(200, OK_BODY)


async def handle(reader, writer, delay):
    STATS["open_connections"] += 1
    STATS["max_open_connections"] = max(STATS["max_open_connections"], STATS["open_connections"])
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            lines = head.split(b"\r\n")
            parts = lines[0].split(b" ")
            if len(parts) < 3:
                return
            method, path, version = parts[0], parts[1], parts[2]
            headers = {}
            for line in lines[1:]:
                if b":" in line:
                    k, v = line.split(b":", 1)
                    headers[k.strip().lower()] = v.strip()
            if headers.get(b"expect", b"").lower() == b"100-continue":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = await read_body(reader, headers)
            STATS["requests"] += 1
            if method == b"GET" and path == b"/_health":
                out = response(200, b'{"ok":true}')
            elif method == b"GET" and path == b"/_stats":
                out = response(200, json.dumps(STATS).encode())
            else:
                STATS["in_flight"] += 1
                STATS["max_in_flight"] = max(STATS["max_in_flight"], STATS["in_flight"])
                try:
                    out = await answer(body, delay)
                finally:
                    STATS["in_flight"] -= 1
            writer.write(out)
            await writer.drain()
            if version == b"HTTP/1.0" or headers.get(b"connection", b"").lower() == b"close":
                return
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        return
    finally:
        STATS["open_connections"] -= 1
        try:
            writer.close()
        except Exception:  # noqa: BLE001 - the peer may be gone already
            pass


async def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--delay", type=float, default=1.0, help="seconds before answering (default 1.0)")
    ap.add_argument("--pidfile")
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    server = await asyncio.start_server(lambda r, w: handle(r, w, args.delay), args.host, args.port,
                                        backlog=4096, reuse_address=True, limit=1 << 20)
    if args.pidfile:
        with open(args.pidfile, "w") as f:
            f.write("%d\n" % os.getpid())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    await stop.wait()
    server.close()
    if args.pidfile:
        try:
            os.unlink(args.pidfile)
        except OSError:
            pass
    os._exit(0)  # keep-alive connections may still be open: do not wait for them


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
