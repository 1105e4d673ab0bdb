"""`kubectl kiln` without a cluster: objects as the apiserver serves them -> rows, tables, patches, requests,
and the errors a user sees (named object, reason, exit code 1, no traceback)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from kiln_cli import completion, diff, history, main, predict, promote, runs, tables
from kiln_cli.cluster import api_error, context_namespace
from kiln_cli.errors import CliError
from kiln_cli.store import Store, store_error

V1_DATA, V2_DATA = "a" * 64, "b" * 64


def pipeline(runs_=None, metric="accuracy", estimator="RandomForestClassifier"):
    search = {"metric": metric} if metric else {}
    return {"metadata": {"name": "loans", "namespace": "kiln-demo"},
            "spec": {"estimator": {"class": estimator}, "search": search},
            "status": {"runs": runs_ if runs_ is not None else [RUN1, RUN2]}}


RUN1 = {"id": "r1", "phase": "Succeeded", "trigger": "create", "job": "loans-r1-trials", "datasetVersion": V1_DATA,
        "trialsPlanned": 2, "trialsSucceeded": 2, "trialsFailed": 0, "trialsStopped": 0,
        "bestMetrics": {"accuracy": 0.952, "f1": 0.95}, "modelVersion": "loans-v1",
        "startedAt": "2026-12-02T05:00:00Z", "finishedAt": "2026-12-02T05:01:10Z",
        "message": "trial 1 selected: accuracy 0.96 on validation"}
RUN2 = {"id": "r2", "phase": "GateFailed", "trigger": "quality", "datasetVersion": V2_DATA, "trialsPlanned": 3,
        "trialsSucceeded": 1, "trialsFailed": 1, "trialsStopped": 1, "challenger": {"metric": "accuracy", "value": 0.5},
        "champion": {"name": "loans-v1", "metric": "accuracy", "value": 0.47},
        "startedAt": "2026-12-02T05:10:00Z", "message": "quality gate failed: accuracy 0.5 < 0.7"}


def mv(name, version, *, stage="None", data=V1_DATA, metrics=None, params=None, sha="1" * 64, inputs=None,
       history_=None, served=None, lineage=None, model="loans"):
    return {
        "metadata": {"name": name, "namespace": "kiln-demo", "creationTimestamp": f"2026-12-02T05:0{version}:00Z"},
        "spec": {"modelName": model, "version": version, "stage": stage,
                 "artifact": {"uri": f"s3://kiln/artifacts/runs/kiln-demo/loans/r{version}/model/model.skops",
                              "sha256": sha, "format": "skops"},
                 "framework": {"name": "scikit-learn", "version": "1.8.0"},
                 "signature": {"inputs": inputs or [{"name": "income", "type": "number"},
                                                    {"name": "debt_ratio", "type": "number"},
                                                    {"name": "years_employed", "type": "integer"}],
                               "output": {"type": "label", "name": "outcome", "classes": ["defaulted", "repaid"]}},
                 "metrics": metrics if metrics is not None else {"accuracy": 0.5},
                 "params": params if params is not None else {"max_depth": 3},
                 "lineage": {"pipeline": "loans", "run": f"r{version}", "dataset": "loans", "datasetVersion": data,
                             "image": "ghcr.io/kiln-dev/kiln-runtime:0.1.0", **(lineage or {})}},
        "status": {"stageHistory": history_ or [], "servedBy": served or []},
    }


# --- tables ----------------------------------------------------------------------------------------

def test_tables_align_columns_like_kubectl_and_show_missing_values_as_a_dash():
    text = tables.render(["NAME", "N", "LAST"], [["a", 1, None], ["long-name", 0.123456, "x"]])
    assert text.splitlines() == ["NAME        N        LAST", "a           1        -", "long-name   0.1235   x"]


def test_numbers_keep_four_significant_digits_and_large_errors_their_integer_part():
    assert (tables.number(0.953333), tables.number(12345.678), tables.number(3), tables.number(None)) == \
        ("0.9533", "12345.7", "3", "-")
    assert tables.delta(0.5, 0.95) == "+0.45 (better)"
    assert tables.delta(10.0, 12.0, lower_is_better=True) == "+2 (worse)"
    assert tables.delta(0.5, 0.5) == "" and tables.delta(None, 1.0) == ""


def test_json_and_yaml_outputs_are_the_view():
    view = [{"id": "r1", "best": 0.9}]
    assert json.loads(tables.dump(view, "json")) == view
    import yaml
    assert yaml.safe_load(tables.dump(view, "yaml")) == view


# --- runs ------------------------------------------------------------------------------------------

def test_runs_table_has_each_runs_phase_trial_counts_best_metric_and_times():
    view = runs.runs_view(pipeline())
    assert [r["id"] for r in view] == ["r1", "r2"]
    assert view[0]["best"] == 0.952 and view[1]["best"] == 0.5  # a gate-failed run: its challenger's score
    lines = runs.runs_table(view).splitlines()
    assert lines[0].split()[:9] == ["RUN", "PHASE", "TRIGGER", "DATA", "PLANNED", "SUCCEEDED", "FAILED", "STOPPED",
                                    "BEST"]
    assert "BEST ACCURACY" in lines[0]
    assert lines[1].split()[:10] == ["r1", "Succeeded", "create", V1_DATA[:12], "2", "2", "0", "0", "0.952", "loans-v1"]
    assert "2026-12-02T05:01:10Z" in lines[1] and lines[1].endswith("trial 1 selected: accuracy 0.96 on validation")
    assert lines[2].split()[:11] == ["r2", "GateFailed", "quality", V2_DATA[:12], "3", "1", "1", "1", "0.5", "-",
                                     "loans-v1=0.47"]  # the champion, scored on the run's own test rows
    assert runs.runs_table(runs.runs_view(pipeline([]))) == "no runs yet"


def test_the_selection_metric_defaults_as_the_runtime_does():
    assert runs.selection_metric(pipeline(metric=None)) == "accuracy"
    assert runs.selection_metric(pipeline(metric=None, estimator="Ridge")) == "rmse"
    assert runs.selection_metric(pipeline(metric="f1")) == "f1"


def test_an_unknown_run_is_named_with_the_runs_kept():
    with pytest.raises(CliError, match=r'run "r9" not found in trainingpipeline "loans" \(runs kept: r1, r2'):
        runs.find_run(pipeline(), "r9")


def test_the_runs_output_comes_from_the_root_the_job_the_model_or_the_search_record():
    p, run = pipeline(), dict(RUN1)
    assert runs.output_prefix(p, run, artifact_root="s3://kiln/artifacts/") == \
        "s3://kiln/artifacts/runs/kiln-demo/loans/r1"
    job = {"spec": {"template": {"spec": {"containers": [{"env": [
        {"name": "KILN_TRAIN_CONFIG", "value": json.dumps({"output": "s3://b/x/r1"})}]}]}}}}
    assert runs.output_prefix(p, run, job=job, model_version=mv("loans-v1", 1)) == "s3://b/x/r1"
    assert runs.output_prefix(p, run, model_version=mv("loans-v1", 1)) == "s3://kiln/artifacts/runs/kiln-demo/loans/r1"
    assert runs.output_prefix(p, {**RUN2, "searchRecord": "s3://b/y/r2/search/halving.json"}) == "s3://b/y/r2"
    with pytest.raises(CliError, match=r'cannot tell where run "r2" .* pass --artifact-root'):
        runs.output_prefix(p, RUN2)


def result(i, score, params, seconds=0.1, metric="accuracy"):
    return {"result.json": {"trial": i, "metric": metric, "score": score, "searchParams": params,
                            "selection": {"on": "validation"}, "trainSeconds": seconds, "warnings": []}}


def test_trials_are_listed_best_first_then_stopped_then_failed():
    records = {0: result(0, 0.90, {"max_depth": 3}), 1: result(1, 0.96, {"max_depth": 6}),
               2: result(2, 0.96, {"max_depth": 9}),
               3: {"stopped.json": {"trial": 3, "round": 0, "score": 0.7, "searchParams": {"max_depth": 1},
                                    "message": "stopped after round 0"}},
               4: {"error.json": {"trial": 4, "reason": "InvalidParameter", "message": "max_depth must be > 0"}}}
    run = {**RUN1, "trialsPlanned": 6, "failedTrials": []}
    view = runs.trials_view(run, records, "accuracy")
    # Ties go to the lowest index, as selection breaks them.
    assert [(t["trial"], t["status"]) for t in view] == [(1, "Succeeded"), (2, "Succeeded"), (0, "Succeeded"),
                                                          (3, "Stopped"), (4, "Failed"), (5, "Failed")]
    assert view[4]["message"] == "InvalidParameter: max_depth must be > 0"
    assert view[5]["message"].startswith("NoResult")  # a finished run whose trial left nothing
    lines = runs.trials_table(view, "accuracy").splitlines()
    assert lines[0].split() == ["TRIAL", "STATUS", "ACCURACY", "ON", "PARAMETERS", "DURATION", "MESSAGE"]
    assert lines[1].split()[:6] == ["1", "Succeeded", "0.96", "validation", "max_depth=6", "0.10s"]
    assert "round 0" in lines[4] and "stopped after round 0" in lines[4]


def test_a_loss_metric_ranks_the_smallest_first_and_a_running_runs_missing_trials_are_pending():
    records = {0: result(0, 3.0, {"alpha": 1.0}, metric="rmse"), 1: result(1, 2.5, {"alpha": 0.1}, metric="rmse")}
    view = runs.trials_view({"id": "r1", "phase": "Running", "trialsPlanned": 3}, records, "rmse")
    assert [(t["trial"], t["status"]) for t in view] == [(1, "Succeeded"), (0, "Succeeded"), (2, "Pending")]


def test_trial_records_are_read_from_a_file_store(tmp_path):
    out = tmp_path / "runs/r1"
    for i, (name, doc) in enumerate([("result.json", {"trial": 0, "score": 0.9}), ("error.json", {"trial": 1})]):
        (out / f"trials/{i}").mkdir(parents=True)
        (out / f"trials/{i}/{name}").write_text(json.dumps(doc))
    (out / "trials/0/model.skops").write_bytes(b"not a record")
    records = Store().trial_records(f"file://{out}")
    assert records == {0: {"result.json": {"trial": 0, "score": 0.9}}, 1: {"error.json": {"trial": 1}}}


def test_an_unreachable_store_is_reported_naming_the_endpoint_and_the_setting(monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    with pytest.raises(CliError) as err:
        Store(f"http://127.0.0.1:{port}").trial_records("s3://kiln/artifacts/runs/ns/p/r1")
    message = str(err.value)
    assert f"cannot reach the artifact store at http://127.0.0.1:{port}" in message
    assert "--s3-endpoint or KILN_S3_ENDPOINT" in message


def test_store_errors_say_which_setting_fixes_them():
    class Denied(Exception):
        response = {"Error": {"Code": "InvalidAccessKeyId"}}

    class NoCredentialsError(Exception):
        pass

    assert "refused the credentials (InvalidAccessKeyId)" in str(store_error("s3://b/k", "http://s3", Denied()))
    assert "no credentials" in str(store_error("s3://b/k", None, NoCredentialsError()))


def test_the_store_endpoint_comes_from_the_flag_then_kiln_s3_endpoint_then_aws(monkeypatch):
    from kiln_cli.store import endpoint

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://aws")
    assert endpoint(None) == "http://aws"
    monkeypatch.setenv("KILN_S3_ENDPOINT", "http://kiln")
    assert endpoint(None) == "http://kiln" and endpoint("http://flag") == "http://flag"


# --- history ---------------------------------------------------------------------------------------

def test_history_lists_a_models_versions_and_merges_their_stage_changes_by_time():
    v1 = mv("loans-v1", 1, stage="Archived", metrics={"accuracy": 0.95, "f1": 0.9}, history_=[
        {"stage": "None", "time": "2026-12-02T05:01:00Z"},
        {"stage": "Production", "time": "2026-12-02T05:01:01Z", "by": "kiln-operator"},
        {"stage": "Archived", "time": "2026-12-02T05:20:00Z"}])
    v2 = mv("loans-v2", 2, stage="Production", data=V2_DATA, served=["loans"], metrics={"accuracy": 0.97, "f1": 0.96},
            history_=[{"stage": "None", "time": "2026-12-02T05:19:00Z"},
                      {"stage": "Production", "time": "2026-12-02T05:19:30Z", "from": "None",
                       "reason": "beats v1 on November", "by": "alice"}])
    other = mv("fraud-v1", 1, model="fraud")
    versions = history.versions_of("loans", [v2, other, v1], "kiln-demo")
    assert [m["metadata"]["name"] for m in versions] == ["loans-v1", "loans-v2"]
    view = history.history_view(versions)
    assert [(c["version"], c["from"], c["stage"]) for c in view["stageChanges"]] == [
        ("loans-v1", None, "None"), ("loans-v1", "None", "Production"), ("loans-v2", None, "None"),
        ("loans-v2", "None", "Production"), ("loans-v1", "Production", "Archived")]
    text = history.history_table(view)
    top, bottom = text.split("\n\nStage changes:\n")
    assert top.splitlines()[0].split() == ["VERSION", "NAME", "STAGE", "ACCURACY", "F1", "DATA", "CREATED", "SERVED", "BY"]
    assert top.splitlines()[2].split() == ["2", "loans-v2", "Production", "0.97", "0.96", V2_DATA[:12],
                                           "2026-12-02T05:02:00Z", "loans"]
    assert bottom.splitlines()[0].split() == ["TIME", "VERSION", "FROM", "TO", "BY", "REASON"]
    assert bottom.splitlines()[4].split(None, 5) == ["2026-12-02T05:19:30Z", "loans-v2", "None", "Production", "alice",
                                                    "beats v1 on November"]


def test_history_of_an_unknown_model_names_the_models_there_are():
    with pytest.raises(CliError, match=r'model "iris" has no modelversions in namespace "x" \(models here: loans\)'):
        history.versions_of("iris", [mv("loans-v1", 1)], "x")


# --- diff ------------------------------------------------------------------------------------------

def test_diff_shows_both_data_versions_the_metric_deltas_and_what_changed():
    a = mv("loans-v1", 1, stage="Archived", metrics={"accuracy": 0.5, "log_loss": 0.7}, params={"max_depth": 3})
    b = mv("loans-v2", 2, stage="Production", data=V2_DATA, sha="2" * 64, metrics={"accuracy": 0.95, "log_loss": 0.2},
           params={"max_depth": 6, "n_estimators": 100}, lineage={"imageDigest": "sha256:" + "c" * 64},
           inputs=[{"name": "income", "type": "number"}, {"name": "debt_ratio", "type": "integer"},
                   {"name": "age", "type": "integer"}])
    view = {r["field"]: r for r in diff.diff_view(a, b)}
    assert view["data version"]["a"] == V1_DATA and view["data version"]["b"] == V2_DATA and view["data version"]["differs"]
    assert view["metrics.accuracy"]["delta"] == "+0.45 (better)"
    assert view["metrics.log_loss"]["delta"] == "-0.5 (better)"  # a loss going down is better
    assert view["params.n_estimators"]["a"] is None and view["params.n_estimators"]["delta"] == "changed"
    assert view["image digest"]["b"].startswith("sha256:") and view["image"]["differs"] is False
    assert [view[f"signature.input {n}"]["delta"] for n in ("income", "debt_ratio", "years_employed", "age")] == \
        ["", "changed", "removed", "added"]
    assert not view["signature.output"]["differs"]
    text = diff.diff_table(diff.diff_view(a, b), "loans-v1", "loans-v2")
    header, *rows = text.splitlines()
    assert header.split() == ["FIELD", "loans-v1", "loans-v2", "DELTA"]
    data = next(r for r in rows if "data version" in r)
    assert data.startswith("* data version") and V1_DATA[:12] in data and V2_DATA[:12] in data
    assert any(r.startswith("* metrics.accuracy") and r.endswith("+0.45 (better)") for r in rows)
    assert any(r.startswith("  framework") for r in rows)  # same on both sides: not marked


# --- promote ---------------------------------------------------------------------------------------

def test_promote_is_one_merge_patch_of_the_stage_and_the_reason_annotation():
    assert promote.patch_body("Production", " beats v1 ") == {
        "metadata": {"annotations": {"kiln.dev/stage-reason": "beats v1"}}, "spec": {"stage": "Production"}}
    # No reason removes an earlier one (null in a merge patch deletes the key).
    assert promote.patch_body("Staging", None)["metadata"]["annotations"] == {"kiln.dev/stage-reason": None}
    assert promote.unchanged(mv("loans-v2", 2, stage="Production"), "Production") == \
        'modelversion "loans-v2" is already in stage Production: nothing changed'
    assert promote.unchanged(mv("loans-v2", 2), "Production") is None
    assert promote.summary("loans-v1", "Archived", {"spec": {"stage": "Staging"}}, "shadow test", False) == \
        'modelversion "loans-v1" Archived -> Staging (reason: "shadow test")'


def test_apiserver_refusals_name_the_object_or_are_printed_as_the_apiserver_wrote_them():
    assert str(api_error(404, "{}", "modelversion", "iris-v9", "x")) == 'modelversion "iris-v9" not found in namespace "x"'
    body = json.dumps({"kind": "Status", "status": "Failure", "reason": "Invalid", "code": 422, "message":
                       "ValidatingAdmissionPolicy 'kiln-stage-reason' denied request: a reason is required"})
    assert str(api_error(422, body, "modelversion", "loans-v2", "x", "patch")) == (
        "Error from server (Invalid): ValidatingAdmissionPolicy 'kiln-stage-reason' denied request: a reason is required")
    assert str(api_error(500, "oops", "modelversion", None, "x", "list")) == \
        'cannot list modelversions in namespace "x": HTTP 500: oops'


# --- predict ---------------------------------------------------------------------------------------

SIGNATURE = mv("loans-v2", 2)["spec"]["signature"]


def test_csv_rows_become_typed_instances_of_the_signatures_features_only():
    text = "id,years_employed,income,debt_ratio,outcome\n7,3,52.5,0.2,repaid\n8,10.0,80,,defaulted\n"
    columns, rows, instances = predict.read_rows(text, SIGNATURE, "rows.csv")
    assert columns == ["id", "years_employed", "income", "debt_ratio", "outcome"]
    assert instances == [{"income": 52.5, "debt_ratio": 0.2, "years_employed": 3},
                         {"income": 80.0, "debt_ratio": None, "years_employed": 10}]
    assert predict.request_body(instances, True)["parameters"] == {"probabilities": True}
    assert "parameters" not in predict.request_body(instances, False)


@pytest.mark.parametrize("text, message", [
    ("income,debt_ratio\n1,2\n", r"rows.csv has no column for the feature\(s\) years_employed; the model takes income, "
                                 r"debt_ratio, years_employed; the header is income, debt_ratio"),
    ("income,debt_ratio,years_employed\n1,2,x\n", r"rows.csv line 2, years_employed: 'x' is not an integer"),
    ("income,debt_ratio,years_employed\nabc,2,1\n", r"rows.csv line 2, income: 'abc' is not a number"),
    ("income,debt_ratio,years_employed\n1,2\n", r"rows.csv line 2: 3 columns expected"),
    ("", r"rows.csv is empty"),
    ("income,debt_ratio,years_employed\n", r"rows.csv has a header but no rows"),
])
def test_bad_csv_files_are_refused_naming_the_line_and_column(text, message):
    with pytest.raises(CliError, match=message):
        predict.read_rows(text, SIGNATURE, "rows.csv")


def test_answers_are_shown_beside_the_rows_with_probabilities_per_class():
    columns = ["income", "outcome"]
    rows = [{"income": "52.123456", "outcome": "repaid"}, {"income": "", "outcome": "defaulted"}]
    instances = [{"income": 52.123456}, {"income": None}]
    answers = [{"predictions": ["repaid"], "probabilities": [[0.1, 0.9]]},
               {"predictions": ["defaulted"], "probabilities": [[0.8, 0.2]]}]
    view = predict.answers_view(columns, rows, instances, answers, ["defaulted", "repaid"])
    # The features as sent (typed, for -o json), the other columns as read.
    assert view[0] == {"income": 52.123456, "outcome": "repaid", "prediction": "repaid",
                       "probabilities": {"defaulted": 0.1, "repaid": 0.9}}
    assert predict.answers_table(view, columns, rows).splitlines() == [
        "INCOME      OUTCOME     PREDICTION   P(defaulted)   P(repaid)",
        "52.123456   repaid      repaid       0.1            0.9",
        "-           defaulted   defaulted    0.8            0.2"]
    with pytest.raises(CliError, match=r"answered 1 prediction\(s\) for 2 row\(s\)"):
        predict.answers_view(columns, rows, instances, answers[:1], None)


def test_a_service_serving_nothing_yet_says_why():
    isvc = {"metadata": {"name": "loans"}, "status": {"conditions": [
        {"type": "Ready", "status": "False", "reason": "WaitingForModel", "message": "no Production version"}]}}
    with pytest.raises(CliError, match=r'inferenceservice "loans" serves no version yet \(Ready False: '
                                       r'WaitingForModel: no Production version\)'):
        predict.served_version(isvc)
    assert predict.service_url({"metadata": {"name": "loans"}, "spec": {"clusterIP": "10.96.0.9"}}) == "http://10.96.0.9:80"
    with pytest.raises(CliError, match="has no cluster IP; pass --url"):
        predict.service_url({"metadata": {"name": "loans"}, "spec": {"clusterIP": "None"}})


def test_a_model_set_needs_the_model_chosen_and_names_the_ones_it_serves():
    isvc = {"metadata": {"name": "tabular"}, "spec": {"models": {"stage": "Production"}},
            "status": {"models": [{"model": "fraud", "version": "fraud-v2"}, {"model": "churn", "version": "churn-v4"}]}}
    assert predict.served_version(isvc, "churn") == "churn-v4"
    with pytest.raises(CliError, match=r'serves a model set: choose one with --model \(churn, fraud\)'):
        predict.served_version(isvc)
    with pytest.raises(CliError, match=r'serves no model "ltv" \(it serves: churn, fraud\)'):
        predict.served_version(isvc, "ltv")


# --- completion ------------------------------------------------------------------------------------

def test_completion_offers_commands_names_stages_and_flags():
    def names(what, namespace):
        return {"modelversion": ["loans-v1", "loans-v2", "fraud-v1"], "namespace": ["kiln-demo"]}[what] \
            if namespace in (None, "kiln-demo") else []

    assert completion.candidates(["pr"], names) == (["predict", "promote"], ":4")
    assert completion.candidates(["promote", "lo"], names) == (["loans-v1", "loans-v2"], ":4")
    assert completion.candidates(["-n", "kiln-demo", "diff", "loans-v1", "l"], names) == (["loans-v1", "loans-v2"], ":4")
    assert completion.candidates(["promote", "loans-v2", "--to", "P"], names) == (["Production"], ":4")
    assert completion.candidates(["predict", "loans", "-f", ""], names) == ([], ":0")  # file names
    assert "--reason" in completion.candidates(["promote", "loans-v2", "--"], names)[0]
    assert completion.candidates(["completion", ""], names) == (["bash", "zsh"], ":4")

    def broken(what, namespace):
        raise RuntimeError("no cluster")
    assert completion.candidates(["history", ""], broken) == ([], ":4")
    assert "complete -F _kubectl_kiln kubectl-kiln" in completion.script("bash")
    assert completion.script("zsh").startswith("#compdef kubectl-kiln")


# --- the command line, end to end against fakes ----------------------------------------------------

class FakeCluster:
    namespace = "kiln-demo"

    def __init__(self, objects, service_ip="127.0.0.1"):
        self.objects, self.patches, self.service_ip = objects, [], service_ip

    def get(self, kind, name):
        if (kind, name) not in self.objects:
            raise api_error(404, None, kind, name, self.namespace)
        return self.objects[(kind, name)]

    def list(self, kind):
        return [o for (k, _), o in self.objects.items() if k == kind]

    def merge_patch(self, kind, name, body, dry_run=False):
        self.patches.append((kind, name, body, dry_run))
        if body["spec"]["stage"] == "Production" and not body["metadata"]["annotations"]["kiln.dev/stage-reason"]:
            raise api_error(422, json.dumps({"kind": "Status", "reason": "Invalid", "message":
                                             "a reason is required for Production"}), kind, name, self.namespace)
        obj = json.loads(json.dumps(self.get(kind, name)))
        obj["spec"]["stage"] = body["spec"]["stage"]
        return obj

    def service(self, name):
        return {"metadata": {"name": name}, "spec": {"clusterIP": self.service_ip}}

    def job(self, name):
        return None


@pytest.fixture()
def fake(monkeypatch):
    cluster = FakeCluster({("modelversion", "loans-v1"): mv("loans-v1", 1, stage="Archived"),
                           ("modelversion", "loans-v2"): mv("loans-v2", 2, stage="Production", data=V2_DATA),
                           ("trainingpipeline", "loans"): pipeline(),
                           ("inferenceservice", "loans"): {"metadata": {"name": "loans"},
                                                           "status": {"modelVersion": "loans-v2"}}})
    monkeypatch.setattr(main, "_cluster", lambda args: cluster)
    return cluster


def test_a_missing_object_is_one_line_on_stderr_and_exit_code_1(fake, capsys):
    assert main.main(["diff", "loans-v1", "iris-v9"]) == 1
    out, err = capsys.readouterr()
    assert (out, err) == ("", 'error: modelversion "iris-v9" not found in namespace "kiln-demo"\n')


def test_usage_errors_exit_1_too(capsys):
    with pytest.raises(SystemExit) as exit_:
        main.main(["promote", "loans-v2", "--to", "Live"])
    assert exit_.value.code == 1 and "invalid choice: 'Live'" in capsys.readouterr().err


def test_promote_sends_one_patch_and_prints_the_apiservers_refusal_as_is(fake, capsys):
    assert main.main(["promote", "loans-v1", "--to", "Staging", "--reason", "shadow test", "-n", "kiln-demo"]) == 0
    assert capsys.readouterr().out == 'modelversion "loans-v1" Archived -> Staging (reason: "shadow test")\n'
    assert fake.patches == [("modelversion", "loans-v1", {"metadata": {"annotations": {
        "kiln.dev/stage-reason": "shadow test"}}, "spec": {"stage": "Staging"}}, False)]
    assert main.main(["promote", "loans-v1", "--to", "Production"]) == 1
    assert capsys.readouterr().err == "Error from server (Invalid): a reason is required for Production\n"
    assert main.main(["promote", "loans-v2", "--to", "Production", "--reason", "again"]) == 0
    assert "already in stage Production" in capsys.readouterr().out and len(fake.patches) == 2


def test_history_and_runs_print_tables_and_json(fake, capsys):
    assert main.main(["history", "loans"]) == 0
    assert "loans-v2   Production" in capsys.readouterr().out
    assert main.main(["runs", "loans", "-o", "json"]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == ["r1", "r2"]


def test_runs_of_a_run_reads_its_trials_from_the_store(fake, capsys, tmp_path):
    for i, score in ((0, 0.9), (1, 0.96)):
        (tmp_path / f"runs/kiln-demo/loans/r1/trials/{i}").mkdir(parents=True)
        (tmp_path / f"runs/kiln-demo/loans/r1/trials/{i}/result.json").write_text(json.dumps(
            result(i, score, {"max_depth": 3 + 3 * i})["result.json"]))
    assert main.main(["runs", "loans", "r1", "--artifact-root", f"file://{tmp_path}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("run r1 of trainingpipeline loans: Succeeded, registered loans-v1")
    assert lines[2].split()[:5] == ["1", "Succeeded", "0.96", "validation", "max_depth=6"]


def test_predict_posts_the_rows_to_the_v1_endpoint_and_prints_the_answers(fake, capsys, tmp_path):
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, body))
            reply(self, 200, {"predictions": ["repaid" if r["income"] > 60 else "defaulted"
                                              for r in body["instances"]]})

        def log_message(self, *args):
            pass

    server = serve(Handler)
    try:
        rows = tmp_path / "rows.csv"
        rows.write_text("income,debt_ratio,years_employed\n80,0.1,3\n20,0.9,1\n")
        assert main.main(["predict", "loans", "-f", str(rows), "--url", f"http://127.0.0.1:{server.server_port}"]) == 0
    finally:
        server.shutdown()
    assert seen == [("/v1/models/loans:predict", {"instances": [
        {"income": 80.0, "debt_ratio": 0.1, "years_employed": 3}, {"income": 20.0, "debt_ratio": 0.9, "years_employed": 1}]})]
    assert capsys.readouterr().out.splitlines() == ["INCOME   DEBT_RATIO   YEARS_EMPLOYED   PREDICTION",
                                                    "80       0.1          3                repaid",
                                                    "20       0.9          1                defaulted"]


def test_an_unreachable_service_names_the_address_and_the_way_out(fake, capsys, tmp_path):
    rows = tmp_path / "rows.csv"
    rows.write_text("income,debt_ratio,years_employed\n80,0.1,3\n")
    assert main.main(["predict", "loans", "-f", str(rows), "--url", "http://127.0.0.1:9"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach http://127.0.0.1:9/v1/models/loans:predict") and "--url" in err


def test_the_namespace_defaults_to_the_contexts_then_default(tmp_path):
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "a",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "a", "context": {"cluster": "c", "user": "u", "namespace": "team-a"}},
                     {"name": "b", "context": {"cluster": "c", "user": "u"}}]}))
    assert context_namespace(str(kubeconfig), None) == "team-a"
    assert context_namespace(str(kubeconfig), "b") == "default"
    assert context_namespace(str(tmp_path / "missing"), None) == "default"


def test_a_bad_kubeconfig_is_an_error_not_a_traceback(capsys):
    assert main.main(["history", "loans", "--kubeconfig", "/nonexistent/kubeconfig"]) == 1
    assert capsys.readouterr().err.startswith("error: cannot load the kubeconfig /nonexistent/kubeconfig")


def reply(handler: BaseHTTPRequestHandler, status: int, payload: dict) -> None:
    body = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def serve(handler) -> HTTPServer:
    server = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def stand_in_kubeconfig(tmp_path, server: HTTPServer):
    """A kubeconfig whose current context is namespace kiln-demo on the stand-in apiserver."""
    path = tmp_path / "config"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "a",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "a", "context": {"cluster": "c", "user": "u", "namespace": "kiln-demo"}}]}))
    return path


def test_promote_sends_the_apiserver_one_merge_patch_and_reads_its_refusal(tmp_path, capsys):
    """The wire, against a stand-in apiserver: a GET, then one PATCH of type merge-patch with the stage,
    the reason and kubectl-kiln as field manager; a Status refusal comes back word for word."""
    requests = []
    stored = mv("loans-v1", 1, stage="Archived")

    class Apiserver(BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(("GET", self.path, None, None))
            if self.path.endswith("/modelversions/loans-v1"):
                return reply(self, 200, stored)
            reply(self, 404, {"kind": "Status", "reason": "NotFound", "code": 404, "message": "not found"})

        def do_PATCH(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            requests.append(("PATCH", self.path, self.headers["Content-Type"], body))
            if body["spec"]["stage"] == "Production":
                return reply(self, 422, {"kind": "Status", "reason": "Invalid", "code": 422, "message":
                                          'modelversions.kiln.dev "loans-v1" is forbidden: a reason is required'})
            reply(self, 200, {**stored, "spec": {**stored["spec"], "stage": body["spec"]["stage"]}})

        def log_message(self, *args):
            pass

    server = serve(Apiserver)
    kubeconfig = stand_in_kubeconfig(tmp_path, server)
    try:
        assert main.main(["promote", "loans-v1", "--to", "Staging", "--reason", "shadow", "--kubeconfig",
                          str(kubeconfig)]) == 0
        assert main.main(["promote", "loans-v1", "--to", "Production", "--kubeconfig", str(kubeconfig)]) == 1
        assert main.main(["diff", "loans-v1", "iris-v9", "--kubeconfig", str(kubeconfig)]) == 1
    finally:
        server.shutdown()
    out, err = capsys.readouterr()
    assert out == 'modelversion "loans-v1" Archived -> Staging (reason: "shadow")\n'
    assert err.splitlines() == [
        'Error from server (Invalid): modelversions.kiln.dev "loans-v1" is forbidden: a reason is required',
        'error: modelversion "iris-v9" not found in namespace "kiln-demo"']
    path = "/apis/kiln.dev/v1alpha1/namespaces/kiln-demo/modelversions/loans-v1"
    patches = [r for r in requests if r[0] == "PATCH"]
    assert patches[0] == ("PATCH", f"{path}?fieldManager=kubectl-kiln", "application/merge-patch+json",
                          {"metadata": {"annotations": {"kiln.dev/stage-reason": "shadow"}}, "spec": {"stage": "Staging"}})
    assert [r[0] for r in requests] == ["GET", "PATCH", "GET", "PATCH", "GET", "GET"]


def test_the_service_and_job_reads_return_plain_dicts_and_a_gone_job_is_none(tmp_path):
    from kiln_cli.cluster import Cluster

    class Apiserver(BaseHTTPRequestHandler):
        def do_GET(self):
            found = {"/api/v1/namespaces/kiln-demo/services/loans": {
                "apiVersion": "v1", "kind": "Service", "metadata": {"name": "loans", "namespace": "kiln-demo"},
                "spec": {"clusterIP": "10.96.7.7", "ports": [{"port": 80, "protocol": "TCP"}]}}}.get(self.path)
            reply(self, 200 if found else 404, found or {"kind": "Status", "reason": "NotFound", "code": 404})

        def log_message(self, *args):
            pass

    server = serve(Apiserver)
    kubeconfig = stand_in_kubeconfig(tmp_path, server)
    try:
        cluster = Cluster.connect(str(kubeconfig), None, "kiln-demo")
        assert predict.service_url(cluster.service("loans")) == "http://10.96.7.7:80"
        assert cluster.job("loans-r1-trials") is None
        with pytest.raises(CliError, match='service "nope" not found in namespace "kiln-demo"'):
            cluster.service("nope")
    finally:
        server.shutdown()
