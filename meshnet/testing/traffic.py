"""Tiny traffic tools for real-kernel tests and benchmarks (run inside lab namespaces).

    python -m meshnet.testing.traffic sink PORT            # TCP: accept, read, count
    python -m meshnet.testing.traffic stream HOST PORT S   # send for S seconds, print JSON
    python -m meshnet.testing.traffic http PORT [TEXT]     # HTTP/1.0 server answering TEXT
    python -m meshnet.testing.traffic udpecho PORT [TEXT]  # UDP: answer every datagram
    python -m meshnet.testing.traffic get URL [TIMEOUT]    # print the body, exit 1 on error
    python -m meshnet.testing.traffic hits URL N [GAP]     # N GETs: JSON counts by body word
    python -m meshnet.testing.traffic udphits HOST PORT N  # N datagrams, fresh source ports
    python -m meshnet.testing.traffic meter PORT           # one TCP stream in, bytes per 0.1 s

``stream`` sends 1 KiB every 5 ms and prints {"sent": bytes, "error": null | "..."};
a connection reset or a write that fails shows up in "error".
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time


def sink(port: int) -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(16)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=_drain, args=(conn,), daemon=True).start()


def _drain(conn: socket.socket) -> None:
    with conn:
        while conn.recv(65536):
            pass


def stream(host: str, port: int, seconds: float) -> dict[str, object]:
    sent, error = 0, None
    try:
        s = socket.create_connection((host, port), timeout=5)
        s.settimeout(5)
        chunk = b"x" * 1024
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            s.sendall(chunk)
            sent += len(chunk)
            time.sleep(0.005)
        s.shutdown(socket.SHUT_WR)
        s.close()
    except OSError as exc:
        error = f"{type(exc).__name__}: {exc}"
    return {"sent": sent, "error": error}


def meter(port: int) -> dict[str, object]:
    """Accept one connection, read it to the end; bytes received per 100 ms from the
    first byte (so a stall of the stream shows as empty buckets)."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(1)
    print("listening", flush=True)
    conn, _ = srv.accept()
    buckets: list[int] = []
    start = 0.0
    error = None
    with conn:
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                now = time.monotonic()
                if not start:
                    start = now
                i = int((now - start) * 10)
                buckets.extend([0] * (i + 1 - len(buckets)))
                buckets[i] += len(data)
        except OSError as exc:
            error = f"{type(exc).__name__}: {exc}"
    return {"buckets": buckets, "total": sum(buckets), "error": error}


def http(port: int, text: str) -> None:
    body = (text + "\n").encode()
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(128)
    while True:
        conn, addr = srv.accept()
        threading.Thread(target=_answer, args=(conn, addr, body), daemon=True).start()


def _answer(conn: socket.socket, addr: tuple, body: bytes) -> None:
    with conn:
        conn.settimeout(5)
        try:
            conn.recv(4096)
            reply = body.replace(b"{peer}", addr[0].encode())
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(reply), reply))
        except OSError:
            pass


def udpecho(port: int, text: str) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    while True:
        data, addr = s.recvfrom(65535)
        s.sendto(text.encode().replace(b"{peer}", addr[0].encode()) or data, addr)


def get(url: str, timeout: float) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - test tool
        return r.read().decode().strip()


def hits(url: str, n: int, interval: float = 0.0, seconds: float = 0.0) -> dict[str, object]:
    """N requests (or, with ``seconds``, as many as fit in that time), one connection
    each; count answers by body (first word) and errors."""
    import collections

    counts: collections.Counter[str] = collections.Counter()
    errors = 0
    log = []
    end = time.monotonic() + seconds
    i = 0
    while (time.monotonic() < end) if seconds else (i < n):
        i += 1
        t = time.time()
        try:
            body = get(url, 2.0)
            counts[body.split()[0] if body else ""] += 1
            log.append((round(t, 3), body))
        except OSError:
            errors += 1
            log.append((round(t, 3), "error"))
        if interval:
            time.sleep(interval)
    return {"counts": dict(counts), "errors": errors, "log": log}


def udphits(host: str, port: int, n: int) -> dict[str, object]:
    import collections

    counts: collections.Counter[str] = collections.Counter()
    errors = 0
    for i in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a new source port each time
        s.settimeout(1.0)
        try:
            s.sendto(b"q%d" % i, (host, port))
            counts[s.recv(512).decode().split()[0]] += 1
        except OSError:
            errors += 1
        finally:
            s.close()
    return {"counts": dict(counts), "errors": errors}


def udpsticky(host: str, port: int, n: int, gap: float) -> None:
    """N datagrams from ONE source port (one conntrack entry), gap seconds apart; prints
    one line "TIME ANSWER" per datagram as it goes."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.5)
    for i in range(n):
        t = time.time()
        try:
            s.sendto(b"q%d" % i, (host, port))
            who = s.recv(512).decode().split()[0]
        except OSError:
            who = "error"
        print(f"{t:.3f} {who}", flush=True)
        time.sleep(gap)


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else ""
    if cmd == "sink":
        sink(int(argv[1]))
    elif cmd == "meter":
        print(json.dumps(meter(int(argv[1]))), flush=True)
    elif cmd == "stream":
        print(json.dumps(stream(argv[1], int(argv[2]), float(argv[3]))), flush=True)
    elif cmd == "http":
        http(int(argv[1]), argv[2] if len(argv) > 2 else "ok")
    elif cmd == "get":
        try:
            print(get(argv[1], float(argv[2]) if len(argv) > 2 else 3.0))
        except OSError as exc:
            print(f"error: {exc}")
            return 1
    elif cmd == "hits":
        interval = float(argv[3]) if len(argv) > 3 else 0.0
        print(json.dumps(hits(argv[1], int(argv[2]), interval)))
    elif cmd == "hitsfor":  # URL SECONDS INTERVAL: requests for that long
        print(json.dumps(hits(argv[1], 0, float(argv[3]), seconds=float(argv[2]))))
    elif cmd == "udphits":
        print(json.dumps(udphits(argv[1], int(argv[2]), int(argv[3]))))
    elif cmd == "udpsticky":
        udpsticky(argv[1], int(argv[2]), int(argv[3]), float(argv[4]))
    elif cmd == "udpecho":
        udpecho(int(argv[1]), argv[2] if len(argv) > 2 else "")
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
