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
COMMANDS = ("validate-dataset", "trial", "select", "verify", "reproduce")
INDEX_ENV = "JOB_COMPLETION_INDEX"


class _Parser(argparse.ArgumentParser):
    # argparse exits with code 2 and no summary; a bad command line is a bad spec like any other.
    def error(self, message: str):
        self.print_usage(sys.stderr)
        raise InvalidSpec(f"{self.prog}: {message}")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="kiln-train", description="Kiln's training runtime (one command per Job).")
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("validate-dataset", "validate a Dataset and write its profile"),
                       ("trial", "train a run's trials: shard $JOB_COMPLETION_INDEX (or --index) of --shards, "
                                 "or the one trial --index without --shards"),
                       ("select", "select the best trial, apply the gates, write the final model")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--config", help="path of the JSON configuration (else $KILN_TRAIN_CONFIG_FILE, "
                                          "else inline JSON in $KILN_TRAIN_CONFIG)")
        if name == "trial":
            cmd.add_argument("--index", type=int, default=None,
                             help="shard index with --shards, else trial index (default $JOB_COMPLETION_INDEX)")
            cmd.add_argument("--shards", type=int, default=None,
                             help="train every SHARDS-th trial from the index on, in this one process")
    cmd = sub.add_parser("verify", help="check stored artifacts' sha256 and that they load safely")
    cmd.add_argument("--uri", action="append", required=True, help="artifact URI (repeatable)")
    cmd.add_argument("--sha256", action="append", required=True, help="its expected digest, in --uri order")
    cmd.add_argument("--format", action="append", choices=("skops", "onnx", "joblib"),
                     help="per --uri; default from the file name (.skops, .onnx, .joblib)")
    cmd.add_argument("--allow-unsafe", action="store_true", help="load joblib files (they execute code)")
    cmd = sub.add_parser("reproduce", help="fit a registered model again from its lineage and compare its metrics")
    cmd.add_argument("--model-version", required=True, metavar="PATH",
                     help="the ModelVersion as JSON (kubectl get modelversion NAME -o json), or its spec")
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


def _reported_index(args: argparse.Namespace | None):
    if args is not None and args.index is not None:
        return args.index
    raw = os.environ.get(INDEX_ENV)
    return int(raw) if raw and raw.strip().isdigit() else raw


def _crash_lines(exc: BaseException, limit: int = 12) -> str:
    lines = "".join(traceback.format_exception(exc)).rstrip().splitlines()
    return "\n".join(lines[-limit:])[-1800:]


def dispatch(args: argparse.Namespace) -> dict:
    from . import reproduce, select, shard, trial, validate_cmd, verify

    if args.command == "verify":  # no configuration: everything is on the command line
        return verify.run(args.uri, args.sha256, args.format, args.allow_unsafe)
    if args.command == "reproduce":  # the ModelVersion is the configuration
        return reproduce.run(args.model_version)
    cfg = spec.parse(spec.load_raw(args.config), needs_pipeline=args.command != "validate-dataset")
    if args.command == "validate-dataset":
        return validate_cmd.run(cfg)
    if args.command == "trial" and args.shards is not None:
        return shard.run(cfg, _index(args.index), args.shards)
    if args.command == "trial":
        return trial.run(cfg, _index(args.index))
    return select.run(cfg)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):  # asked for, not a bad spec
        _parser().print_help()
        return EXIT_OK
    if not argv or argv[0] not in COMMANDS:
        _parser().print_help(sys.stderr)
        command = argv[0] if argv else None
        termination.write({"v": SCHEMA_VERSION, "command": command, "result": "Failed", "reason": "InvalidSpec",
                           "message": f"unknown command {command!r}: use one of {', '.join(COMMANDS)}"})
        return EXIT_PERMANENT
    head = {"v": SCHEMA_VERSION, "command": argv[0]}
    args = None
    try:
        args = _parser().parse_args(argv)
        summary = {**head, **dispatch(args)}
        code = EXIT_OK
    except TrainError as exc:
        summary = {**head, "result": "Failed", "reason": exc.reason, "message": str(exc), **exc.details}
        if head["command"] == "trial" and "trial" not in summary and "shard" not in summary:
            if args is not None and args.shards is not None:
                summary.update(shard=_reported_index(args), shards=args.shards)
            else:
                summary["trial"] = _reported_index(args)
        code = exc.exit_code
        print(f"kiln-train {head['command']}: {exc.reason}: {exc}", file=sys.stderr)
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
