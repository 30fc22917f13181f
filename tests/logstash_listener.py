"""A TCP listener standing in for Logstash's tcp/json_lines input, shared by the
log-shipping unit tests and the system tests."""
from __future__ import annotations

import json
import socket
import threading


class Listener:
    """Collects newline-delimited JSON; `read=False` accepts connections and never
    reads them (a stalled Logstash, with a small receive buffer so it fills fast)."""

    def __init__(self, port: int = 0, read: bool = True) -> None:
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if not read:
            self.server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.server.bind(("127.0.0.1", port))
        self.server.listen(16)
        self.port = self.server.getsockname()[1]
        self.read = read
        self.data = bytearray()
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            self.connections.append(connection)
            if self.read:
                threading.Thread(target=self._read, args=(connection,), daemon=True).start()

    def _read(self, connection: socket.socket) -> None:
        while True:
            try:
                chunk = connection.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            self.data.extend(chunk)

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in bytes(self.data).split(b"\n") if line]

    def close(self) -> None:
        for connection in self.connections:
            connection.close()
        self.server.close()
