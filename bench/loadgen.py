"""A lean load generator for the serving benches: raw HTTP/1.1 keep-alive requests and /proc CPU time."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from shared.proc import child_pids


class RawHttpConnection:
    """One HTTP/1.1 keep-alive connection over asyncio streams, for load generation.

    The benches' load client shares the machine's CPUs with the server it measures; httpx spends
    about a millisecond of CPU per request in Python, which on two cores is taken from the server.
    This client sends pre-built request bytes and reads the status line, ``Content-Length`` and the
    body, nothing else (no chunked encoding, no redirects): what wrk-style load generators do.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    @classmethod
    def from_url(cls, url: str) -> RawHttpConnection:
        """A connection to ``http://host:port`` (no path, no TLS)."""
        host, _, port = url.removeprefix("http://").rstrip("/").rpartition(":")
        return cls(host, int(port))

    @staticmethod
    def build(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
              host: str = "127.0.0.1") -> bytes:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        """Send one pre-built request; (status, body). Reconnects when the server closed the connection."""
        for attempt in (0, 1):
            if self._writer is None:
                self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
            try:
                self._writer.write(raw)
                head = await self._reader.readuntil(b"\r\n\r\n")
                break
            except (ConnectionError, asyncio.IncompleteReadError):
                await self.close()
                if attempt:
                    raise
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length, close = 0, False
        for line in lines[1:]:
            k, _, v = line.partition(":")
            k = k.strip().lower()
            if k == "content-length":
                length = int(v)
            elif k == "connection" and v.strip().lower() == "close":
                close = True
            elif k == "transfer-encoding":
                raise RuntimeError("RawHttpConnection does not read chunked answers")
        body = await self._reader.readexactly(length) if length else b""
        if close:
            await self.close()
        return status, body

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except (ConnectionError, OSError):
                pass
        self._reader = self._writer = None


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) from /proc; nan where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and every live descendant (uvicorn ``--workers``: the parent
    and its worker processes), summed from /proc; nan where unavailable."""
    total = process_cpu_seconds(pid)
    if total != total:  # the root itself is gone
        return float("nan")
    todo, seen = child_pids(pid), {pid}
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        cpu = process_cpu_seconds(p)
        total += 0.0 if cpu != cpu else cpu
        todo += child_pids(p)
    return total
