"""kiln-monitor: wires configuration, baseline, windows, receiver, evaluator and HTTP together.

Threads: the main thread receives datagrams (the hot path, alone on its loop); an evaluator thread
recomputes the report every interval from a snapshot of the windows; the HTTP server answers on
its own threads from the last report (and joins feedback); a writer thread per Parquet log uploads
payloads and labelled rows. SIGTERM or SIGINT stops them: the receiver first reads what is still
queued on the socket (and what kiln-serve sends while it drains), then the HTTP server stops, then
the logs write everything buffered, so every received (and sampled) row is in the store.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time

from prometheus_client import CollectorRegistry

from kiln_runtime.handoff import process_token

from . import baseline as baseline_mod
from . import config as config_mod
from . import endpoints
from .evaluate import evaluate
from .feedback import FeedbackStore
from .metrics import DriftCollector, LoopCollector
from .payload_log import FrameBlock, ParquetLog, sampled
from .quality import Quality
from .receiver import Counters, Receiver, bind
from .window import Windows

log = logging.getLogger("kiln_runtime.monitor")


class Monitor:
    def __init__(self, cfg: config_mod.Config):
        self.cfg = cfg
        self.stop = threading.Event()
        self.baseline: baseline_mod.Baseline | None = None
        self.windows: Windows | None = None
        self.counters: Counters | None = None  # set once rows can be received
        self.report: dict | None = None
        self.error: str | None = None
        self.http_port: int | None = None
        self._drifting: tuple[str, ...] = ()
        # The data loop: built at start (they hold no threads until started), fed once rows arrive.
        token = process_token()
        common = dict(flush_rows=cfg.payload_flush_rows, flush_seconds=cfg.payload_flush_seconds,
                      buffer_rows=cfg.payload_buffer_rows)
        self.payload = ParquetLog(cfg.payload_uri, cfg.model, cfg.version, token, what="payload",
                                  **common) if cfg.payload_uri else None
        self.labelled = ParquetLog(cfg.labelled_uri, cfg.model, cfg.version, token, what="labelled",
                                   **common) if cfg.labelled_uri else None
        self.quality = Quality(cfg.quality_window_rows, cfg.task)
        self.feedback = FeedbackStore(self.quality, cfg.feedback_ttl_seconds, cfg.feedback_max_rows,
                                      self.labelled, cfg.label_column)

    # --- what the endpoints read ---------------------------------------------------------------
    def drift(self) -> tuple[int, dict]:
        if self.report is None:
            status = "loading baseline" if self.baseline is None else "starting"
            return 503, {"model": self.cfg.model, "version": self.cfg.version, "status": status,
                         "error": self.error}
        # Live sections are read now, not at the last evaluation: labels count as soon as joined.
        report = dict(self.report, quality=self.quality.snapshot(), feedback=self.feedback.stats())
        if self.payload is not None:
            report["payload"] = self.payload.stats()
        if self.labelled is not None:
            report["labelled"] = self.labelled.stats()
        return 200, report

    def post_feedback(self, body: bytes) -> tuple[int, dict]:
        if self.counters is None:
            return 503, {"error": "feedback is not accepted yet: the monitor is loading its baseline"}
        return self.feedback.handle(body)

    def _log_payload(self, frame) -> None:
        self.payload.add(FrameBlock(frame, sampled(frame, self.cfg.payload_sample_rate), time.time()))

    def ready(self) -> bool:
        return self.counters is not None

    # --- work ------------------------------------------------------------------------------------
    def load_baseline(self) -> baseline_mod.Baseline | None:
        """Retries with backoff: the artifact store may come up after the pod (or be briefly down),
        and a sidecar in a crash loop would take the pod's readiness down with it."""
        delay = 1.0
        while not self.stop.is_set():
            try:
                return baseline_mod.load(self.cfg.baseline_uri, self.cfg.max_features)
            except Exception as exc:  # StoreError, BaselineError, or a malformed document
                self.error = str(exc)
                log.warning("cannot load the baseline (retrying in %.0f s): %s", delay, exc)
                self.stop.wait(delay)
                delay = min(delay * 2, 30.0)
        return None

    def evaluate_once(self) -> dict | None:
        try:
            report = evaluate(self.baseline, self.windows.snapshot(), self.cfg.thresholds,
                              self.cfg.model, self.cfg.version, self.cfg.window_rows)
        except Exception:
            log.exception("drift evaluation failed; keeping the previous report")
            return None
        c = self.counters
        report["rowsDropped"] = sum(dict(c.rows_dropped).values())
        report["framesDropped"] = dict(c.frames_dropped)
        self.report = report
        drifting = tuple(report["driftedFeatures"]) + (
            ("(prediction)",) if (report["prediction"] or {}).get("drift") else ())
        if drifting != self._drifting:  # log changes only, not every interval
            self._drifting = drifting
            if drifting:
                log.warning("drift detected: %s (score %s)", ", ".join(drifting), report["score"])
            else:
                log.info("no drift")
        return report

    def _evaluate_loop(self) -> None:
        while not self.stop.wait(self.cfg.interval_seconds):
            self.evaluate_once()

    def run(self) -> int:
        cfg = self.cfg
        registry = CollectorRegistry(auto_describe=False)
        registry.register(DriftCollector((cfg.model, cfg.version), lambda: self.report,
                                         lambda: self.counters, cfg.window_rows))
        registry.register(LoopCollector((cfg.model, cfg.version), self.payload, self.labelled, self.feedback,
                                        self.quality))
        server = endpoints.serve(cfg.host, cfg.port, endpoints.make_handler(registry, self.drift, self.ready,
                                                                            self.post_feedback))
        self.http_port = server.server_port
        log.info("kiln-monitor for %s version %s: http on %s:%d", cfg.model, cfg.version, cfg.host, self.http_port)
        sock = None
        try:
            self.baseline = self.load_baseline()
            if self.baseline is None:
                return 0  # stopped while waiting for the baseline
            self.error = None
            self.windows = Windows(self.baseline, cfg.window_rows)
            counters = Counters()
            sinks = [self.feedback.add]
            if self.payload is not None:
                sinks.append(self._log_payload)
                self.payload.start()
                log.info("payload log: %s (sampling %g, flush every %g s or %d rows)", cfg.payload_uri,
                         cfg.payload_sample_rate, cfg.payload_flush_seconds, cfg.payload_flush_rows)
            if self.labelled is not None:
                self.labelled.start()
                log.info("labelled rows: %s (label column %r)", cfg.labelled_uri, cfg.label_column)
            # "unknown" means the operator did not say: accept frames of any model and version.
            receiver = Receiver(self.windows, None if cfg.model == "unknown" else cfg.model,
                                None if cfg.version == "unknown" else cfg.version, counters, sinks)
            sock = bind(cfg.socket_path)
            self.counters = counters
            self.evaluate_once()  # an (empty) report from the start, so /drift never 503s once ready
            threading.Thread(target=self._evaluate_loop, name="evaluator", daemon=True).start()
            log.info("receiving on %s: %d features, window %d rows, evaluation every %g s",
                     cfg.socket_path, len(self.baseline.features), cfg.window_rows, cfg.interval_seconds)
            receiver.run(sock, self.stop)
            drained = receiver.drain(sock)
            log.info("stopping: read %d more datagrams after the stop", drained)
            return 0
        finally:
            self.stop.set()
            if sock is not None:
                sock.close()
                try:
                    os.unlink(cfg.socket_path)
                except OSError:
                    pass
            server.shutdown()
            server.server_close()
            for plog in (self.payload, self.labelled):
                if plog is not None:
                    plog.stop()
                    log.info("%s log: %d rows in %d files written, %d dropped %s", plog.what, plog.rows_written,
                             plog.files_written, sum(plog.rows_dropped.values()), dict(plog.rows_dropped))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kiln-monitor",
        description="Kiln's drift sidecar. Configured by environment variables only: see the "
                    "'kiln-monitor' section of docs/pod-contract.md (KILN_BASELINE_URI is required).")
    parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("KILN_LOG_LEVEL", "INFO").upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_mod.from_env()
    except config_mod.ConfigError as exc:
        log.error("configuration: %s", exc)
        return 2
    monitor = Monitor(cfg)

    def _stop(signum, _frame) -> None:
        log.info("signal %d: stopping", signum)
        monitor.stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    return monitor.run()
