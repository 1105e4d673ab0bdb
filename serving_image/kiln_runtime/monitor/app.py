"""kiln-monitor: wires configuration, baseline, windows, receiver, evaluator and HTTP together.

Threads: the main thread receives datagrams (the hot path, alone on its loop); an evaluator thread
recomputes the report every interval from a snapshot of the windows; the HTTP server answers on
its own threads from the last report. SIGTERM or SIGINT stops all three within about a second.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from prometheus_client import CollectorRegistry

from . import baseline as baseline_mod
from . import config as config_mod
from . import endpoints
from .evaluate import evaluate
from .metrics import DriftCollector
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

    # --- what the endpoints read ---------------------------------------------------------------
    def drift(self) -> tuple[int, dict]:
        if self.report is None:
            status = "loading baseline" if self.baseline is None else "starting"
            return 503, {"model": self.cfg.model, "version": self.cfg.version, "status": status,
                         "error": self.error}
        return 200, self.report

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
        server = endpoints.serve(cfg.host, cfg.port, endpoints.make_handler(registry, self.drift, self.ready))
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
            # "unknown" means the operator did not say: accept frames of any model and version.
            receiver = Receiver(self.windows, None if cfg.model == "unknown" else cfg.model,
                                None if cfg.version == "unknown" else cfg.version, counters)
            sock = bind(cfg.socket_path)
            self.counters = counters
            self.evaluate_once()  # an (empty) report from the start, so /drift never 503s once ready
            threading.Thread(target=self._evaluate_loop, name="evaluator", daemon=True).start()
            log.info("receiving on %s: %d features, window %d rows, evaluation every %g s",
                     cfg.socket_path, len(self.baseline.features), cfg.window_rows, cfg.interval_seconds)
            receiver.run(sock, self.stop)
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
