"""A raw HTTP/1.1 client over a plain socket, for requests no HTTP library would send
(odd header bytes, oversized headers, bodies that arrive slowly): tests/test_fuzz.py."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

Answer = tuple[int, dict[str, str], bytes]  # status (0: no answer), headers, body


@contextmanager
def connection(port: int) -> Iterator[socket.socket]:
    """A plain TCP connection to the local server on `port`."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        yield sock


def read_answer(sock: socket.socket) -> Answer:
    """One HTTP/1.1 answer off a raw socket (Content-Length or chunked, or to close)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if not lines[0].startswith(b"HTTP/1.1 "):
        return 0, {}, data
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
    if "content-length" in headers:
        while len(rest) < int(headers["content-length"]):
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return status, headers, rest
    while True:  # chunked or close-delimited: read to the end, then unchunk
        chunk = sock.recv(65536)
        if not chunk or rest.endswith(b"0\r\n\r\n"):
            break
        rest += chunk
    if headers.get("transfer-encoding") == "chunked":
        body, remaining = b"", rest
        while remaining:
            size_line, _, remaining = remaining.partition(b"\r\n")
            size = int(size_line or b"0", 16)
            if not size:
                break
            body, remaining = body + remaining[:size], remaining[size + 2:]
        rest = body
    return status, headers, rest


def post(port: int, path: str, body: bytes, headers: list[tuple[bytes, bytes]],
         pauses: list[float] | None = None) -> Answer:
    """POST `body` with exactly these header lines; with `pauses`, the body is sent in
    pieces with those pauses between them. (0, {}, b"") when the server reset it."""
    head = [b"POST " + path.encode() + b" HTTP/1.1", b"host: 127.0.0.1",
            b"content-length: " + str(len(body)).encode()]
    head += [name + b": " + value for name, value in headers]
    with connection(port) as sock:
        try:
            sock.sendall(b"\r\n".join(head) + b"\r\n\r\n")
            if pauses:  # a slow body: pieces with pauses between them
                step = max(1, len(body) // (len(pauses) + 1))
                for i, pause in enumerate(pauses):
                    sock.sendall(body[i * step:(i + 1) * step])
                    time.sleep(pause)
                sock.sendall(body[len(pauses) * step:])
            else:
                sock.sendall(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered (and closed) before it had all: read what it said
        try:
            return read_answer(sock)
        except ConnectionResetError:
            return 0, {}, b""
