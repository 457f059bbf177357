"""A connection burst for the kit's load tests (the emulator's and the stub's).

``burst`` starts a server script, stops it (SIGSTOP) so that nothing is accepted, opens ``count``
connections at once, each sending one GET, lets the server run again and reads every answer. A
connection the listen backlog cannot hold times out (or is reset) instead of being answered: with
werkzeug's default backlog of 128, 871 of 1,000 did. POSIX only.
"""

import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CONNECT_TIMEOUT_SECONDS = 2.0
READ_TIMEOUT_SECONDS = 30.0


def _connect(port: int, path: str) -> socket.socket | str:
    try:
        conn = socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT_SECONDS)
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        conn.settimeout(READ_TIMEOUT_SECONDS)
        return conn
    except OSError as exc:
        return f"connect: {exc!r}"


def _status_line(conn: socket.socket | str) -> str:
    if isinstance(conn, str):
        return conn
    try:
        with conn:
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
        return data.split(b"\r\n", 1)[0].decode()
    except OSError as exc:
        return f"read: {exc!r}"


def burst(script: Path, path: str, count: int) -> Counter:
    """How the ``count`` requests of one burst to ``script``'s ``path`` ended: status lines
    (``HTTP/1.1 200 OK``) or the client's error, counted."""
    proc = subprocess.Popen([sys.executable, str(script), "--port", "0"], stdout=subprocess.PIPE,
                            text=True)
    try:
        port = int(proc.stdout.readline().split()[1].rsplit(":", 1)[1])
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            with ThreadPoolExecutor(200) as pool:
                conns = list(pool.map(lambda _: _connect(port, path), range(count)))
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        with ThreadPoolExecutor(200) as pool:
            return Counter(pool.map(_status_line, conns))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
