#!/usr/bin/env python3
"""Open many HTTP/1.1 keep-alive connections, complete one request on each, then hold them idle.

Protocol with the caller (idle-connections.sh), line based:
  stdout "READY <open> <failed> <seconds>"  once every connection has its response (or failed);
  stdin  any line or EOF                     closes every connection;
  stdout "CLOSED <open> <closed_by_peer>"   just before exiting, where <open> is how many were
                                             still open when told to close.
Everything is bounded: --setup-timeout for opening, --hold-timeout for waiting on the caller.
"""
import argparse
import errno
import os
import selectors
import socket
import sys
import time


class Conn:
    __slots__ = ("sock", "buf", "need", "state")

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.need = -1       # body bytes still expected once the head is parsed; -1 = head not complete
        self.state = "connecting"


def parse_head(c):
    """Returns True once the whole response (head and Content-Length body) has been read."""
    if c.need < 0:
        end = c.buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = c.buf[:end].decode("latin-1").lower()
        length = 0
        chunked = False
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip() == "content-length":
                length = int(value.strip())
            elif name.strip() == "transfer-encoding" and "chunked" in value:
                chunked = True
        c.buf = c.buf[end + 4:]
        c.need = -2 if chunked else length
    if c.need == -2:  # chunked: good enough for a benchmark, the last chunk ends the body
        return c.buf.endswith(b"0\r\n\r\n")
    return len(c.buf) >= c.need


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--path", default="/")
    ap.add_argument("--parallel", type=int, default=200, help="connections being opened at once")
    ap.add_argument("--setup-timeout", type=float, default=120.0)
    ap.add_argument("--hold-timeout", type=float, default=120.0)
    a = ap.parse_args()

    request = ("GET %s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: idle-client\r\n\r\n" % (a.path, a.host, a.port)).encode()
    sel = selectors.DefaultSelector()
    idle = []
    failed = 0
    started = 0
    inflight = 0
    t0 = time.monotonic()
    deadline = t0 + a.setup_timeout

    def fail(c):
        nonlocal failed, inflight
        sel.unregister(c.sock)
        c.sock.close()
        failed += 1
        inflight -= 1

    while (started < a.count or inflight > 0) and time.monotonic() < deadline:
        while started < a.count and inflight < a.parallel:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            started += 1
            err = s.connect_ex((a.host, a.port))
            if err not in (0, errno.EINPROGRESS):
                s.close()
                failed += 1
                continue
            inflight += 1
            sel.register(s, selectors.EVENT_WRITE, Conn(s))
        for key, _ in sel.select(timeout=0.5):
            c = key.data
            if c.state == "connecting":
                if c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                    fail(c)
                    continue
                try:
                    c.sock.send(request)  # a few dozen bytes: one send on a fresh socket
                except OSError:
                    fail(c)
                    continue
                c.state = "reading"
                sel.modify(c.sock, selectors.EVENT_READ, c)
                continue
            try:
                data = c.sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                fail(c)
                continue
            if not data:
                fail(c)
                continue
            c.buf += data
            if parse_head(c):
                sel.unregister(c.sock)
                c.buf = b""
                idle.append(c.sock)
                inflight -= 1
    # Anything still in flight at the deadline counts as failed.
    for key in list(sel.get_map().values()):
        sel.unregister(key.fileobj)
        key.fileobj.close()
        failed += 1
    failed += a.count - started

    print("READY %d %d %.1f" % (len(idle), failed, time.monotonic() - t0), flush=True)

    # Hold: watch the idle sockets for the peer closing them, until the caller says stop.
    for s in idle:
        sel.register(s, selectors.EVENT_READ)
    sel.register(sys.stdin, selectors.EVENT_READ)
    closed_by_peer = 0
    hold_deadline = time.monotonic() + a.hold_timeout
    stop = False
    while not stop and time.monotonic() < hold_deadline:
        for key, _ in sel.select(timeout=0.5):
            if key.fileobj is sys.stdin:
                stop = True
                break
            s = key.fileobj
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if not data:
                sel.unregister(s)
                s.close()
                closed_by_peer += 1
    still_open = len(idle) - closed_by_peer
    for key in list(sel.get_map().values()):
        if key.fileobj is not sys.stdin:
            key.fileobj.close()
    print("CLOSED %d %d" % (still_open, closed_by_peer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
