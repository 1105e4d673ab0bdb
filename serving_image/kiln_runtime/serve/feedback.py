"""`POST /v2/models/{name}/feedback`: ground truth for answered requests, relayed to kiln-monitor.

The monitor holds the served rows (it receives every one of them over the hand-off), so it does the
join; kiln-serve only makes sure the rows of a just-answered request have left its hand-off buffer
before the labels follow them (a flush), then relays the body over HTTP on localhost and returns
the monitor's status and JSON answer unchanged. The relay is a coroutine on the event loop: a slow
monitor delays the feedback answer, never a prediction.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlparse

import orjson

log = logging.getLogger("kiln.serve")

TIMEOUT_S = 10.0
_MAX_ANSWER = 16 << 20  # the monitor's answer lists one result per feedback item at most


class Relay:
    def __init__(self, url: str | None, flush=None, timeout_s: float = TIMEOUT_S):
        self.url = url
        self.flush = flush  # the hand-off sender's flush, or None without a hand-off
        self.timeout_s = timeout_s
        self._tasks: set = set()  # strong references: the loop keeps only weak ones
        parsed = urlparse(url) if url else None
        self.host = parsed.hostname if parsed else None
        self.port = (parsed.port or 80) if parsed else None
        self.path = ((parsed.path.rstrip("/") if parsed else "") or "") + "/feedback"

    def handle(self, conn, slot, body: bytes) -> None:
        if not self.url:
            conn.fail(slot, 503, "feedback is joined by the kiln-monitor sidecar, and KILN_MONITOR_URL "
                                 "is not set on this server")
            return
        if self.flush is not None:
            self.flush()
        task = asyncio.get_running_loop().create_task(self._relay(conn, slot, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _relay(self, conn, slot, body: bytes) -> None:
        try:
            status, answer = await asyncio.wait_for(self._post(body), self.timeout_s)
        except asyncio.TimeoutError:
            conn.fail(slot, 504, f"the kiln-monitor at {self.url} did not answer the feedback within "
                                 f"{self.timeout_s:.0f} s")
            return
        except (OSError, ValueError) as exc:
            conn.fail(slot, 503, f"the kiln-monitor at {self.url} is unreachable: {exc}")
            return
        except Exception:
            log.exception("relaying feedback failed")
            conn.fail(slot, 502, "relaying the feedback to kiln-monitor failed")
            return
        conn.respond(slot, status, answer)

    async def _post(self, body: bytes) -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(b"POST " + self.path.encode() + b" HTTP/1.1\r\nhost: " + self.host.encode()
                         + b"\r\ncontent-type: application/json\r\ncontent-length: " + str(len(body)).encode()
                         + b"\r\nconnection: close\r\n\r\n" + body)
            await writer.drain()
            raw = await reader.read(_MAX_ANSWER)
            while True:  # until the monitor closes the connection (connection: close)
                more = await reader.read(_MAX_ANSWER)
                if not more:
                    break
                raw += more
                if len(raw) > _MAX_ANSWER:
                    raise ValueError("the monitor's answer is too large")
        finally:
            writer.close()
        return parse_answer(raw)


def parse_answer(raw: bytes) -> tuple[int, bytes]:
    """(status, body) of an HTTP/1.1 answer that ends at the connection's close."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError("the monitor's answer has no header end")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        raise ValueError("the monitor's answer has no status line")
    status = int(parts[1])
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            body = body[: int(value.strip())]
    if not body:
        body = orjson.dumps({"error": f"kiln-monitor answered {status} with no body"})
    return status, body
