"""kiln-monitor, the drift sidecar: hand-off frames in, sliding windows, drift statistics against the
baseline profile, Prometheus gauges on /metrics and the drift report on /drift."""


def main(argv: list[str] | None = None) -> int:
    # Imported on call so `import kiln_runtime.monitor.stats` does not pull in the whole sidecar.
    from .app import main as run

    return run(argv)
