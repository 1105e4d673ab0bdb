"""The receiving end of the hand-off socket: datagrams in, windows updated, bad input counted.

Runs on its own thread and does nothing but decode and fold frames in, so its speed is the
sidecar's ingest rate. Nothing a sender puts in a datagram can stop it: every failure is counted
under a reason and the loop moves on.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter

from kiln_runtime.handoff import Frame, FrameError, decode_frame

from .window import Windows

log = logging.getLogger(__name__)

# Linux refuses Unix datagrams above about 208 KiB by default (net.core.wmem_max); 1 MiB leaves
# room for raised limits. A datagram larger than the buffer is truncated by the kernel, which
# decode_frame then rejects on its length check, so oversize input is dropped, not misread.
MAX_DATAGRAM = 1 << 20
# Room for bursts while the evaluator holds the CPU; the kernel caps it at net.core.rmem_max.
RECEIVE_BUFFER = 4 << 20

# The reasons a datagram is dropped; a fixed set, so the counter's label cardinality is bounded.
MALFORMED = "malformed"  # not a frame: bad magic, truncated, bad header, wrong body length
MISMATCH = "model_mismatch"  # a frame for another model or version than this sidecar's baseline
ERROR = "error"  # a well-formed frame whose content could not be folded in


class Counters:
    """Totals written by the receiver thread only and read by /metrics (int reads are atomic)."""

    def __init__(self):
        self.frames_received = 0
        self.rows_received = 0
        self.frames_dropped: Counter[str] = Counter()
        self.rows_dropped: Counter[str] = Counter()


def bind(path: str) -> socket.socket:
    """Binds the hand-off socket, replacing a stale one left by a previous run of the sidecar."""
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    # The server container may run under another uid; the socket lives in a volume only this pod
    # mounts, so the pod boundary is the access control and the socket itself is open to it.
    os.chmod(path, 0o666)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    # A timeout, not a blocking recv, so the loop notices a stop request within half a second.
    sock.settimeout(0.5)
    return sock


def detach(frame: Frame) -> Frame:
    """A copy of the frame that no longer aliases the receive buffer, for consumers that keep it."""
    preds = frame.predictions
    return Frame(frame.model, frame.version, frame.numeric, frame.matrix.copy(),
                 preds if preds.dtype == object else preds.copy(), frame.categorical, frame.requests)


# After a stop, datagrams keep being read until none came for this long: kiln-serve, stopped by the
# same SIGTERM, sends its last rows when its own drain ends (its hand-off timer ticks every 0.5 s).
DRAIN_QUIET_SECONDS = 1.0
DRAIN_MAX_SECONDS = 20.0


class Receiver:
    def __init__(self, windows: Windows, model: str | None, version: str | None,
                 counters: Counters | None = None, sinks=()):
        self.windows = windows
        # Consumers of every ingested frame (payload log, feedback store), given a detached copy.
        self.sinks = tuple(sinks)
        # None accepts any model or version (a sidecar configured without them).
        self.model, self.version = model, version
        self.counters = counters or Counters()
        self._warned: set[tuple[str, str]] = set()
        self._last_error_log = 0.0

    def _drop(self, reason: str, rows: int = 0) -> None:
        self.counters.frames_dropped[reason] += 1
        if rows:
            self.counters.rows_dropped[reason] += rows

    def handle(self, datagram) -> None:
        """Decodes one datagram and folds it into the windows; never raises."""
        c = self.counters
        try:
            frame = decode_frame(datagram)
        except Exception as exc:  # FrameError, and anything a hostile header could provoke
            self._drop(MALFORMED)
            self._log_rarely("dropped a malformed datagram (%d bytes): %s", len(datagram), exc,
                             expected=isinstance(exc, FrameError))
            return
        if (self.model is not None and frame.model != self.model) or \
                (self.version is not None and frame.version != self.version):
            self._drop(MISMATCH, frame.rows)
            key = (frame.model, frame.version)
            if key not in self._warned and len(self._warned) < 16:
                self._warned.add(key)
                log.warning("dropping frames for model %r version %r: this sidecar monitors %r version %r",
                            frame.model, frame.version, self.model, self.version)
            return
        try:
            self.windows.ingest(frame)
        except Exception as exc:
            self._drop(ERROR, frame.rows)
            self._log_rarely("dropped a frame of %d rows: %s", frame.rows, exc, expected=False)
            return
        c.frames_received += 1
        c.rows_received += frame.rows
        if self.sinks:
            kept = detach(frame)
            for sink in self.sinks:
                try:
                    sink(kept)
                except Exception as exc:  # a consumer's fault costs its copy of the rows, not ingest
                    self._log_rarely("a frame consumer failed: %s", exc, expected=False)

    def _log_rarely(self, message: str, *args, expected: bool) -> None:
        # A sender stuck on bad input would otherwise flood the log: one line per 10 s at most.
        now = time.monotonic()
        if now - self._last_error_log >= 10:
            self._last_error_log = now
            log.warning(message, *args, exc_info=not expected)

    def run(self, sock: socket.socket, stop: threading.Event) -> None:
        buf = bytearray(MAX_DATAGRAM)
        view = memoryview(buf)
        recv_into = sock.recv_into
        while not stop.is_set():
            try:
                n = recv_into(buf)
            except TimeoutError:
                continue
            except OSError as exc:
                if stop.is_set():
                    break
                log.warning("receive failed: %s", exc)
                time.sleep(0.1)
                continue
            # The frame's arrays alias `buf`; ingest copies them into the rings before the next
            # receive overwrites it, so no per-datagram allocation is needed.
            self.handle(view[:n])

    def drain(self, sock: socket.socket, quiet: float = DRAIN_QUIET_SECONDS,
              limit: float = DRAIN_MAX_SECONDS) -> int:
        """After a stop: reads datagrams already queued, and those still arriving, until none came
        for `quiet` seconds (or `limit` passed). Returns the datagrams read."""
        buf = bytearray(MAX_DATAGRAM)
        view = memoryview(buf)
        deadline = time.monotonic() + limit
        count = 0
        sock.settimeout(quiet)
        while time.monotonic() < deadline:
            try:
                n = sock.recv_into(buf)
            except TimeoutError:
                break
            except OSError as exc:
                log.warning("receive failed while draining: %s", exc)
                break
            self.handle(view[:n])
            count += 1
        return count
