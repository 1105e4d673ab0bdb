"""`kiln-serve`: read the settings, verify and load the model, serve; one clear line on refusal.

Exit codes: 0 after a graceful shutdown, 2 for a configuration error, 3 when the model is refused
(digest mismatch, unsafe format, unreadable artifact, signature mismatch), 1 otherwise.
"""

from __future__ import annotations

import logging
import sys

from . import loader, settings as settings_mod
from .errors import LoadError

USAGE = """usage: kiln-serve

Serves one model over KServe V1 and the Open Inference Protocol (V2). Configured only through
environment variables (KILN_MODEL_NAME, KILN_MODEL_URI, KILN_MODEL_SHA256, KILN_SIGNATURE, ...);
docs/pod-contract.md, section "kiln-serve", lists them all.
"""


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("kiln")
    except Exception:
        return "0"


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(USAGE)
        sys.exit(0)
    if args:
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s kiln-serve %(levelname)s %(message)s")
    log = logging.getLogger("kiln.serve")
    try:
        settings = settings_mod.load()
    except settings_mod.SettingsError as exc:
        log.error("invalid configuration: %s", exc)
        sys.exit(2)
    logging.getLogger().setLevel(settings.log_level)
    try:
        artifacts = loader.fetch(settings)
        if settings.workers == 1:
            from . import server

            sys.exit(server.run(settings, artifacts, _version()))
        # Build once in the parent too, so a model that cannot load fails before any fork.
        loader.build(settings, artifacts)
        from . import server

        sys.exit(server.run(settings, artifacts, _version()))
    except LoadError as exc:
        log.error("refusing to serve: %s", exc)
        sys.exit(3)
    except OSError as exc:
        log.error("cannot serve: %s", exc)
        sys.exit(1)
