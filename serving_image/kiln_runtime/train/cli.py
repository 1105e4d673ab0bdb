"""The kiln-train entry point: parse the command, run it, report through the termination message.

Whatever happens, exactly one JSON summary is written (docs/pod-contract.md, section kiln-train) and the
exit code tells the Job whether a retry can help.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from . import spec, termination
from .errors import EXIT_CRASH, EXIT_OK, EXIT_PERMANENT, InvalidSpec, TrainError

SCHEMA_VERSION = 1
COMMANDS = ("validate-dataset", "trial", "select")
INDEX_ENV = "JOB_COMPLETION_INDEX"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kiln-train", description="Kiln's training runtime (one command per Job).")
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("validate-dataset", "validate a Dataset and write its profile"),
                       ("trial", "train one trial of a run (index from $JOB_COMPLETION_INDEX or --index)"),
                       ("select", "select the best trial, apply the gates, write the final model")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--config", help="path of the JSON configuration (else $KILN_TRAIN_CONFIG_FILE, "
                                          "else inline JSON in $KILN_TRAIN_CONFIG)")
        if name == "trial":
            cmd.add_argument("--index", type=int, default=None, help="trial index (default $JOB_COMPLETION_INDEX)")
    return p


def _index(arg: int | None) -> int:
    if arg is not None:
        return arg
    raw = os.environ.get(INDEX_ENV)
    if raw is None:
        raise InvalidSpec(f"no trial index: run as an Indexed Job (${INDEX_ENV}) or pass --index")
    try:
        return int(raw)
    except ValueError:
        raise InvalidSpec(f"${INDEX_ENV} must be an integer, got {raw!r}") from None


def _crash_lines(exc: BaseException, limit: int = 12) -> str:
    lines = "".join(traceback.format_exception(exc)).rstrip().splitlines()
    return "\n".join(lines[-limit:])[-1800:]


def dispatch(args: argparse.Namespace) -> dict:
    from . import select, trial, validate_cmd

    cfg = spec.parse(spec.load_raw(args.config), needs_pipeline=args.command != "validate-dataset")
    if args.command == "validate-dataset":
        return validate_cmd.run(cfg)
    if args.command == "trial":
        return trial.run(cfg, _index(args.index))
    return select.run(cfg)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        _parser().print_help(sys.stderr)
        command = argv[0] if argv else None
        termination.write({"v": SCHEMA_VERSION, "command": command, "result": "Failed", "reason": "InvalidSpec",
                           "message": f"unknown command {command!r}: use one of {', '.join(COMMANDS)}"})
        return EXIT_PERMANENT
    args = _parser().parse_args(argv)
    head = {"v": SCHEMA_VERSION, "command": args.command}
    try:
        summary = {**head, **dispatch(args)}
        code = EXIT_OK
    except TrainError as exc:
        summary = {**head, "result": "Failed", "reason": exc.reason, "message": str(exc), **exc.details}
        if args.command == "trial" and "trial" not in summary:
            summary["trial"] = args.index if args.index is not None else os.environ.get(INDEX_ENV)
        code = exc.exit_code
        print(f"kiln-train {args.command}: {exc.reason}: {exc}", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - the one place a crash becomes a report
        first = str(exc).strip().splitlines()
        summary = {**head, "result": "Failed", "reason": "TrainerCrashed",
                   "message": f"{type(exc).__name__}: {first[0][:400] if first else ''}".rstrip(": "),
                   "traceback": _crash_lines(exc)}
        code = EXIT_CRASH
        traceback.print_exc()
    termination.write(summary)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
