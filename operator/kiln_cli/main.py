"""`kubectl kiln`: argument parsing and dispatch; each command's reads here, its formatting in its module."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import completion, diff, history, predict, promote, runs, tables
from .errors import CliError

EXAMPLES = """examples:
  kubectl kiln runs loans                   the pipeline's runs
  kubectl kiln runs loans r2                run r2's trials, best first
  kubectl kiln history loans                versions, stage changes, what serves what
  kubectl kiln diff loans-v1 loans-v2       two versions side by side
  kubectl kiln promote loans-v2 --to Production --reason "beats v1 on November's loans"
  kubectl kiln predict loans -f rows.csv    the service's answers to a CSV's rows
"""


def _globals(parser: argparse.ArgumentParser, suppress: bool) -> None:
    # On the top parser and on every command, so flags work before or after the command as with
    # kubectl; SUPPRESS on the commands keeps a flag given before the command from being reset.
    d = (lambda value: argparse.SUPPRESS) if suppress else (lambda value: value)
    parser.add_argument("-n", "--namespace", default=d(None),
                        help="namespace (default: the kubeconfig context's, else default)")
    parser.add_argument("--kubeconfig", default=d(None), help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    parser.add_argument("--context", default=d(None), help="kubeconfig context (default: the current one)")
    parser.add_argument("-o", "--output", choices=("table", "json", "yaml"), default=d("table"),
                        help="output format (default: table)")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # Exit 1 like every other error of the plugin (and kubectl's usage errors), not argparse's 2.
        self.print_usage(sys.stderr)
        self.exit(1, f"error: {message}\n")


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="kubectl kiln", description="Kiln's runs, models and services as a user reads them.",
                  epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _globals(top, suppress=False)
    sub = top.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        _globals(p, suppress=True)
        return p

    p = command("runs", "a TrainingPipeline's runs; with RUN, that run's trials, best first")
    p.add_argument("pipeline", metavar="PIPELINE")
    p.add_argument("run", metavar="RUN", nargs="?", help="a run id, e.g. r2")
    p.add_argument("--s3-endpoint", help="the artifact store's S3 endpoint (default: $KILN_S3_ENDPOINT, "
                                         "$AWS_ENDPOINT_URL, AWS); credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
    p.add_argument("--artifact-root", default=None,
                   help="the operator's artifact root (its KILN_ARTIFACT_ROOT), when the run's Job is gone and it "
                        "registered no model (default: $KILN_ARTIFACT_ROOT)")
    p = command("history", "a model's ModelVersions, their stage changes and what serves them")
    p.add_argument("model", metavar="MODEL", help="the model's name (spec.modelName)")
    p = command("diff", "two ModelVersions side by side")
    p.add_argument("a", metavar="VERSION_A")
    p.add_argument("b", metavar="VERSION_B")
    p = command("promote", "set a ModelVersion's stage, with the reason recorded (one merge patch)")
    p.add_argument("version", metavar="VERSION", help="the ModelVersion's name, e.g. loans-v2")
    p.add_argument("--to", required=True, choices=completion.STAGES, help="the new stage")
    p.add_argument("--reason", help=f"why; set as the annotation {promote.REASON_ANNOTATION} (admission may "
                                    "require it for Production)")
    p.add_argument("--dry-run", action="store_true", help="ask the apiserver (and its admission) without storing")
    p = command("predict", "send a CSV's rows to an InferenceService and print its answers")
    p.add_argument("service", metavar="SERVICE", help="the InferenceService's name")
    p.add_argument("-f", "--filename", required=True, help="CSV with a header of feature names ('-': stdin)")
    p.add_argument("--url", help="the server's address (default: http://<its Service's cluster IP>:80)")
    p.add_argument("--probabilities", action="store_true", help="also each class's probability")
    p.add_argument("--model", help="with a service serving a model set (spec.models): which model")
    p = command("completion", "print a shell completion script for kubectl-kiln")
    p.add_argument("shell", choices=("bash", "zsh"))
    return top


def _cluster(args):
    from .cluster import Cluster

    return Cluster.connect(args.kubeconfig, args.context, args.namespace)


def _show(args, view, table: str) -> None:
    print(table if args.output == "table" else tables.dump(view, args.output))


def cmd_runs(args) -> None:
    from .store import Store

    cluster = _cluster(args)
    pipeline = cluster.get("trainingpipeline", args.pipeline)
    if not args.run:
        view = runs.runs_view(pipeline)
        return _show(args, view, runs.runs_table(view))
    run = runs.find_run(pipeline, args.run)
    root = args.artifact_root or os.environ.get("KILN_ARTIFACT_ROOT")
    job = cluster.job(run["job"]) if run.get("job") and not root else None
    mv = None
    if not root and runs.output_from_job(job) is None and run.get("modelVersion"):
        try:
            mv = cluster.get("modelversion", run["modelVersion"])
        except CliError:
            mv = None  # deleted since: the search record or --artifact-root may still say
    output = runs.output_prefix(pipeline, run, artifact_root=root, job=job, model_version=mv)
    metric = runs.selection_metric(pipeline)
    view = runs.trials_view(run, Store(args.s3_endpoint).trial_records(output), metric)
    _show(args, {"run": run["id"], "phase": run.get("phase"), "output": output, "metric": metric, "trials": view},
          runs.run_title(pipeline, run, output) + "\n" + runs.trials_table(view, metric))


def cmd_history(args) -> None:
    cluster = _cluster(args)
    view = history.history_view(history.versions_of(args.model, cluster.list("modelversion"), cluster.namespace))
    _show(args, view, history.history_table(view))


def cmd_diff(args) -> None:
    cluster = _cluster(args)
    a, b = cluster.get("modelversion", args.a), cluster.get("modelversion", args.b)
    view = diff.diff_view(a, b)
    _show(args, {"a": args.a, "b": args.b, "fields": view}, diff.diff_table(view, args.a, args.b))


def cmd_promote(args) -> None:
    cluster = _cluster(args)
    mv = cluster.get("modelversion", args.version)
    same = promote.unchanged(mv, args.to)
    if same:
        print(same)
        return
    before = (mv.get("spec") or {}).get("stage") or "None"
    after = cluster.merge_patch("modelversion", args.version, promote.patch_body(args.to, args.reason),
                                dry_run=args.dry_run)
    _show(args, after, promote.summary(args.version, before, after, args.reason, args.dry_run))


def cmd_predict(args) -> None:
    cluster = _cluster(args)
    isvc = cluster.get("inferenceservice", args.service)
    mv = cluster.get("modelversion", predict.served_version(isvc, args.model))
    source = "stdin" if args.filename == "-" else args.filename
    try:
        text = sys.stdin.read() if args.filename == "-" else Path(args.filename).read_text()
    except OSError as exc:
        raise CliError(f"cannot read {args.filename}: {exc.strerror or exc}") from None
    signature = mv["spec"].get("signature") or {}
    columns, rows, instances = predict.read_rows(text, signature, source)
    base = (args.url or predict.service_url(cluster.service(args.service))).rstrip("/")
    url = f"{base}/v1/models/{mv['spec']['modelName']}:predict"
    answers = [predict.post(url, predict.request_body(part, args.probabilities))
               for part in predict.batches(instances)]
    view = predict.answers_view(columns, rows, instances, answers, (signature.get("output") or {}).get("classes"))
    _show(args, view, predict.answers_table(view, columns, rows))


def cmd_completion(args) -> None:
    print(completion.script(args.shell), end="")


COMMANDS = {"runs": cmd_runs, "history": cmd_history, "diff": cmd_diff, "promote": cmd_promote,
            "predict": cmd_predict, "completion": cmd_completion}


def complete(words: list[str]) -> int:
    """Cobra's completion protocol: candidates, one per line, then `:<directive>`."""
    def names(what: str, namespace: str | None):
        flags = argparse.ArgumentParser(add_help=False)
        _globals(flags, suppress=False)
        known, _ = flags.parse_known_args(words[:-1])
        from .cluster import Cluster

        cluster = Cluster.connect(known.kubeconfig, known.context, namespace)
        if what == "namespace":
            from kubernetes import client

            return [n.metadata.name for n in client.CoreV1Api(cluster.api).list_namespace(_request_timeout=5).items]
        if what == "model":
            return {(m.get("spec") or {}).get("modelName") or "" for m in cluster.list("modelversion")}
        return [o["metadata"]["name"] for o in cluster.list(what)]

    found, directive = completion.candidates(words, names)
    print("\n".join([*found, directive]))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["__complete"]:
        return complete(argv[1:])
    args = parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except CliError as exc:
        message = str(exc)
        print(message if message.startswith("Error from server") else f"error: {message}", file=sys.stderr)
        return exc.code
    except ImportError as exc:
        # The package's base install has no dependencies; the plugin's come with the operator extra.
        print(f"error: kubectl kiln needs {exc.name}: pip install 'kiln[operator]'", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `| head`: the reader left, nothing is wrong
        return 0
    return 0


def complete_main() -> int:
    """`kubectl_complete-kiln`, which kubectl runs to complete `kubectl kiln ...`."""
    return complete(sys.argv[1:])
