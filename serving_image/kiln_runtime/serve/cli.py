"""`kiln-serve`: read the settings, verify and load the model, serve; one clear line on refusal.

Exit codes: 0 after a graceful shutdown, 2 for a configuration error (a bad variable, or a models file
that cannot be read or parsed), 3 when the model is refused (digest mismatch, unsafe format,
unreadable artifact, signature mismatch; single-model mode only: in multi-model mode a refused model
is answered 503 and the others go on), 1 otherwise.
"""

from __future__ import annotations

import logging
import sys

from . import loader, settings as settings_mod
from .errors import LoadError

USAGE = """usage: kiln-serve

Serves one model over KServe V1 and the Open Inference Protocol (V2), or with KILN_MODELS_FILE
every model that file lists (loaded on first request, evicted to keep KILN_MEMORY_BUDGET_BYTES).
Configured only through environment variables (KILN_MODEL_NAME, KILN_MODEL_URI, KILN_MODEL_SHA256,
KILN_SIGNATURE, ...); docs/pod-contract.md, section "kiln-serve", lists them all.
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
    if settings.models_file:
        sys.exit(_serve_table(settings, log))
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


def _serve_table(settings, log) -> int:
    """Multi-model mode: a models file that cannot be read or parsed is a configuration error (2)."""
    import os

    from . import models_file, server

    watcher = models_file.Watcher(settings.models_file)
    try:
        table = models_file.parse(watcher.read(), settings, os.path.basename(settings.models_file))
    except OSError as exc:
        log.error("invalid configuration: cannot read KILN_MODELS_FILE %s: %s", settings.models_file, exc)
        return 2
    except models_file.TableError as exc:
        log.error("invalid configuration: %s", exc)
        return 2
    try:
        return server.run_multi(settings, table, watcher, _version())
    except OSError as exc:
        log.error("cannot serve: %s", exc)
        return 1
