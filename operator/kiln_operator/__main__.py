"""`python -m kiln_operator`: run the operator against a kubeconfig (or in-cluster)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from . import logs

LOCAL_KUBECONFIG = Path(os.environ.get("KILN_CACHE", Path.home() / ".cache/kiln")) / "state/kubeconfig"


def choose_kubeconfig(explicit: str | None) -> str | None:
    """--kubeconfig, then $KUBECONFIG, then in-cluster credentials, then the local cluster's file."""
    if explicit:
        return explicit
    if os.environ.get("KUBECONFIG") or os.environ.get("KUBERNETES_SERVICE_HOST"):
        return os.environ.get("KUBECONFIG")
    return str(LOCAL_KUBECONFIG) if LOCAL_KUBECONFIG.exists() else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="kiln-operator", description=__doc__)
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, in-cluster, the local cluster)")
    parser.add_argument("--namespace", action="append", help="watch only this namespace (repeatable)")
    parser.add_argument("--health", default="http://0.0.0.0:8080/healthz", help="liveness endpoint URL")
    parser.add_argument("--peering", default=None,
                        help="KopfPeering name: replicas elect one active operator (default: standalone)")
    parser.add_argument("--metrics-port", type=int, default=int(os.environ.get("KILN_METRICS_PORT", "8081")),
                        help="port of the operator's Prometheus metrics (0: none)")
    parser.add_argument("--log-level", default=os.environ.get("KILN_LOG_LEVEL", "INFO"))
    parser.add_argument("--plain-logs", action="store_true", help="human-readable logs instead of JSON")
    args = parser.parse_args(argv)

    kubeconfig = choose_kubeconfig(args.kubeconfig)
    if kubeconfig:
        os.environ["KUBECONFIG"] = kubeconfig
    logs.configure(args.log_level, json_format=not args.plain_logs)

    import kopf  # imported after the kubeconfig is chosen: kopf's login reads it

    from . import finalizers, handlers, metrics, preflight, settings  # noqa: F401  (registers the handlers)

    gaps = handlers.missing_grants(args.namespace)
    if gaps:
        logging.getLogger(__name__).error(f"not starting: {preflight.refusal(gaps)}")
        sys.exit(1)
    finalizers.release_all(args.namespace)  # what the timers of earlier versions left on objects
    if args.namespace:
        handlers.follow_namespaces(args.namespace)
    metrics.install(handlers.CONTROLLER.queue.depth, handlers.CONTROLLER.queue.oldest_wait,
                    handlers.CONTROLLER.ready_states)
    try:
        metrics.serve(args.metrics_port)
    except OSError as exc:  # a taken port must not keep the operator from working
        logging.getLogger(__name__).warning(f"no metrics endpoint on port {args.metrics_port}: {exc}")

    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace or [],
        liveness_endpoint=args.health,
        standalone=args.peering is None,
        peering_name=args.peering,
    )


if __name__ == "__main__":
    main()
