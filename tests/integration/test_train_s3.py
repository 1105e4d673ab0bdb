"""kiln-train against a real S3 API server on loopback: moto's standalone server in its own process,
with IAM authentication switched on, so wrong credentials are refused by the server itself.

The main flow runs the `kiln-train` console script as subprocesses, the way pods run it: dataset
validation, an 4-trial random search two at a time, selection. The bad-input cases call the same entry
point in-process (same code, same server, less interpreter start-up).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import numpy as np
import onnxruntime as ort
import pytest
from sklearn import datasets
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score
from sklearn.model_selection import train_test_split

from kiln_runtime.store import sha256_hex
from kiln_runtime.train import artifacts, cli, onnx_export, spec
from s3_server import moto_server

BUCKET = "kiln-artifacts"
KILN_TRAIN = str(Path(sys.executable).with_name("kiln-train"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 with one IAM user allowed s3:*; yields the env a pod would get."""
    # The first three requests (create user, key, policy) go unauthenticated; every later one is
    # checked against IAM like real S3.
    with moto_server(env={"INITIAL_NO_AUTH_ACTION_COUNT": "3"}) as url:
        iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1",
                           aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        iam.create_user(UserName="kiln")
        key = iam.create_access_key(UserName="kiln")["AccessKey"]
        iam.put_user_policy(UserName="kiln", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        env = {"AWS_ENDPOINT_URL": url, "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
               "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                              aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
        client.create_bucket(Bucket=BUCKET)
        yield {"env": env, "client": client, "url": url}


def _iris_csv() -> tuple[bytes, dict]:
    bunch = datasets.load_iris(as_frame=True)
    frame = bunch.data.copy()
    frame.columns = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    frame["species"] = np.asarray(bunch.target_names)[bunch.target.to_numpy()]
    schema = {"columns": [{"name": c, "type": "number", "min": 0, "max": 20, "nullable": False}
                          for c in frame.columns[:4]]
              + [{"name": "species", "type": "category", "allowed": list(bunch.target_names), "nullable": False}]}
    return frame.to_csv(index=False).encode(), {"target": "species", "schema": schema, "checks": {"minRows": 100}}


PIPELINE = {"modelName": "iris", "estimator": {"class": "RandomForestClassifier", "params": {"random_state": 0}},
            "search": {"strategy": "random", "trials": 4, "parallelism": 2, "metric": "accuracy",
                       "space": {"n_estimators": [10, 25, 50], "max_depth": [2, 4, 8]}},
            "evaluation": {"testFraction": 0.25, "seed": 7},
            "gates": {"metrics": [{"metric": "accuracy", "min": 0.9}]}}


def _get(s3, key: str) -> bytes:
    return s3["client"].get_object(Bucket=BUCKET, Key=key)["Body"].read()


def _spawn(s3, command: str | list[str], cfg_path: Path | None, term: Path,
           index: int | None = None) -> subprocess.Popen:
    env = {**os.environ, **s3["env"], "KILN_TERMINATION_LOG": str(term)}
    if cfg_path:
        env["KILN_TRAIN_CONFIG_FILE"] = str(cfg_path)
    if index is not None:
        env["JOB_COMPLETION_INDEX"] = str(index)
    argv = [command] if isinstance(command, str) else command
    return subprocess.Popen([KILN_TRAIN, *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _communicate(proc: subprocess.Popen) -> tuple[bytes, bytes]:
    """The process's output once it exits; killed if it has not after 300 s, so it never outlives the test."""
    try:
        return proc.communicate(timeout=300)
    finally:
        _kill(proc)


def _kill(*procs: subprocess.Popen) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _finish(proc: subprocess.Popen, term: Path) -> dict:
    out, err = _communicate(proc)
    assert proc.returncode == 0, err.decode()[-2000:]
    summary = json.loads(term.read_bytes())
    assert json.loads(out.decode().strip().splitlines()[-1]) == summary  # also the last log line
    return summary


def test_validate_search_and_select_through_s3(s3, tmp_path):
    data, dataset = _iris_csv()
    s3["client"].put_object(Bucket=BUCKET, Key="data/iris.csv", Body=data)
    dataset["source"] = {"uri": f"s3://{BUCKET}/data/iris.csv", "format": "csv"}

    # Dataset validation: version = sha256 of the object, profile stored by version.
    vcfg = tmp_path / "validate.json"
    vcfg.write_text(json.dumps({"dataset": dataset, "output": f"s3://{BUCKET}/datasets/default/iris"}))
    v = _finish(_spawn(s3, "validate-dataset", vcfg, tmp_path / "v.log"), tmp_path / "v.log")
    assert v["result"] == "Succeeded" and v["version"] == sha256_hex(data) and v["rows"] == 150
    profile = json.loads(_get(s3, v["profileUri"].split("/", 3)[3]))
    assert list(profile["columns"]) == ["sepal_length", "sepal_width", "petal_length", "petal_width", "species"]
    assert profile["columns"]["species"]["categories"] == pytest.approx(
        {"setosa": 1 / 3, "versicolor": 1 / 3, "virginica": 1 / 3})

    # The run: an Indexed Job's four completions, two at a time, then the selection step.
    run = f"s3://{BUCKET}/runs/default/iris-forest/r1"
    cfg = {"dataset": dataset, "datasetVersion": v["version"], "pipeline": PIPELINE, "output": run,
           "lineage": {"pipeline": "iris-forest", "run": "r1", "dataset": "iris"}}
    cfg_path = tmp_path / "run.json"
    cfg_path.write_text(json.dumps(cfg))
    trials = {}
    for batch in ((0, 1), (2, 3)):
        procs = {}
        try:
            for i in batch:
                procs[i] = _spawn(s3, "trial", cfg_path, tmp_path / f"t{i}.log", index=i)
            trials.update({i: _finish(p, tmp_path / f"t{i}.log") for i, p in procs.items()})
        finally:
            _kill(*procs.values())  # the other trial too, when one failed
    assert [trials[i]["trial"] for i in range(4)] == [0, 1, 2, 3]
    assert len({json.dumps(t["params"], sort_keys=True) for t in trials.values()}) == 4  # distinct draws
    sel = _finish(_spawn(s3, "select", cfg_path, tmp_path / "s.log"), tmp_path / "s.log")
    assert sel["result"] == "Succeeded", sel
    best = max(range(4), key=lambda i: (trials[i]["score"], -i))
    assert sel["bestTrial"] == best

    # Metrics equal a direct scikit-learn computation on the same split and seed.
    # The trials score on a validation split carved from the training part; the test split is scored
    # once, on the winner, as trained in its trial.
    params = trials[best]["params"]
    X, y = datasets.load_iris(return_X_y=True)
    y = np.asarray(datasets.load_iris().target_names)[y]
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=7, stratify=y)
    X_fit, X_val, y_fit, y_val = train_test_split(X_train, y_train, test_size=0.2, random_state=7, stratify=y_train)
    direct = RandomForestClassifier(random_state=0, **params).fit(X_fit, y_fit)
    assert trials[best]["score"] == accuracy_score(y_val, direct.predict(X_val))
    mv = sel["modelVersion"]
    assert mv["metrics"]["accuracy"] == accuracy_score(y_test, direct.predict(X_test)) == sel["heldOut"]["accuracy"]
    assert mv["lineage"] == {"pipeline": "iris-forest", "run": "r1", "dataset": "iris", "datasetVersion": v["version"],
                             "trial": best, "estimator": "RandomForestClassifier", "seed": 7, "testFraction": 0.25,
                             "validationFraction": 0.2, "cvFolds": 0}

    # The artifacts in S3 are the ones the summary names, byte for byte; skops and ONNX agree.
    key = lambda uri: uri.split("/", 3)[3]  # noqa: E731
    model_bytes = _get(s3, key(mv["artifact"]["uri"]))
    assert sha256_hex(model_bytes) == mv["artifact"]["sha256"]
    onnx_bytes = _get(s3, key(mv["artifact"]["onnx"]["uri"]))
    assert sha256_hex(onnx_bytes) == mv["artifact"]["onnx"]["sha256"]
    model = artifacts.loads(model_bytes, "skops")
    import pandas as pd

    frame = pd.DataFrame(X_test, columns=["sepal_length", "sepal_width", "petal_length", "petal_width"])
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    features = spec.parse_dataset(dataset).features
    labels, _ = session.run(None, onnx_export.feeds(session, features, frame))
    assert labels.tolist() == model.predict(frame).tolist() == direct.predict(X_test).tolist()
    manifest = json.loads(_get(s3, key(sel["manifestUri"])))
    assert manifest["modelVersion"] == mv and set(manifest["files"]) == {
        "model.skops", "model.onnx", "signature.json", "metrics.json", "baseline.json"}

    # The registry's Verified check, through S3: both artifacts pass; a replaced object does not.
    verify = ["verify", "--uri", mv["artifact"]["uri"], "--sha256", mv["artifact"]["sha256"],
              "--uri", mv["artifact"]["onnx"]["uri"], "--sha256", mv["artifact"]["onnx"]["sha256"]]
    ok = _finish(_spawn(s3, verify, None, tmp_path / "verify.log"), tmp_path / "verify.log")
    assert [a["format"] for a in ok["artifacts"]] == ["skops", "onnx"]
    s3["client"].put_object(Bucket=BUCKET, Key=key(mv["artifact"]["uri"]), Body=model_bytes + b"\0")
    proc = _spawn(s3, verify, None, tmp_path / "tampered.log")
    _communicate(proc)
    bad = json.loads((tmp_path / "tampered.log").read_bytes())
    assert proc.returncode == 10 and bad["reason"] == "DigestMismatch" and bad["uri"] == mv["artifact"]["uri"]

    # A changed source is a new version, profiled beside the old one; the old run refuses it.
    changed = data + b"5.0,3.0,1.5,0.2,setosa\n"
    s3["client"].put_object(Bucket=BUCKET, Key="data/iris.csv", Body=changed)
    v2 = _finish(_spawn(s3, "validate-dataset", vcfg, tmp_path / "v2.log"), tmp_path / "v2.log")
    assert v2["version"] == sha256_hex(changed) != v["version"] and v2["rows"] == 151
    assert v2["profileUri"] != v["profileUri"]


def test_a_shard_killed_mid_run_is_retried_without_training_a_trial_twice(s3, tmp_path):
    """One pod's shard dies (SIGKILL, as when a node goes away) after some trials: the retried index
    trains only the rest, and selection counts every trial exactly once."""
    data, dataset = _iris_csv()
    s3["client"].put_object(Bucket=BUCKET, Key="data/iris-shard.csv", Body=data)
    dataset["source"] = {"uri": f"s3://{BUCKET}/data/iris-shard.csv", "format": "csv"}
    run = f"runs/default/iris-shard/{tmp_path.name}"
    pipe = {**PIPELINE, "search": {"strategy": "grid", "trials": 12, "metric": "accuracy",
                                   "space": {"n_estimators": [40, 80, 120, 160], "max_depth": [2, 4, 8]}}}
    cfg_path = tmp_path / "run.json"
    cfg_path.write_text(json.dumps({"dataset": dataset, "pipeline": pipe, "output": f"s3://{BUCKET}/{run}"}))

    def results() -> dict[str, str]:
        listed = s3["client"].list_objects_v2(Bucket=BUCKET, Prefix=f"{run}/trials/").get("Contents", [])
        return {o["Key"]: o["ETag"] for o in listed if o["Key"].endswith("/result.json")}

    proc = _spawn(s3, ["trial", "--shards", "1"], cfg_path, tmp_path / "first.log", index=0)
    try:
        deadline = time.monotonic() + 120
        while len(results()) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the shard finished before it could be killed: make its trials slower"
        proc.send_signal(signal.SIGKILL)
    finally:
        _kill(proc)
    before = results()
    assert 3 <= len(before) < 12
    retried = _finish(_spawn(s3, ["trial", "--shards", "1"], cfg_path, tmp_path / "retry.log", index=0),
                      tmp_path / "retry.log")
    assert retried["trials"] == {"assigned": 12, "succeeded": 12, "failed": 0, "stopped": 0, "reused": len(before)}
    after = results()
    assert len(after) == 12 and all(after[k] == etag for k, etag in before.items())  # none trained again
    sel = _finish(_spawn(s3, "select", cfg_path, tmp_path / "select.log"), tmp_path / "select.log")
    assert sel["trials"] == {"planned": 12, "succeeded": 12, "failed": 0, "stopped": 0}


@pytest.fixture
def in_process(s3, tmp_path, monkeypatch):
    for k, v in s3["env"].items():
        monkeypatch.setenv(k, v)
    term = tmp_path / "term.log"
    monkeypatch.setenv("KILN_TERMINATION_LOG", str(term))
    data, dataset = _iris_csv()
    s3["client"].put_object(Bucket=BUCKET, Key="data/iris-fixed.csv", Body=data)
    dataset["source"] = {"uri": f"s3://{BUCKET}/data/iris-fixed.csv", "format": "csv"}
    small = {**PIPELINE, "search": {**PIPELINE["search"], "trials": 1}}

    def run(command, index=0, **overrides):
        # boto3's default session resolves credentials once per process; a pod's never change, but
        # these tests change them between runs.
        boto3.DEFAULT_SESSION = None
        cfg = {"dataset": dataset, "pipeline": small, "output": f"s3://{BUCKET}/runs/{tmp_path.name}", **overrides}
        path = tmp_path / "cfg.json"
        path.write_text(json.dumps(cfg))
        monkeypatch.setenv("JOB_COMPLETION_INDEX", str(index))
        code = cli.main([command, "--config", str(path)])
        return code, json.loads(term.read_bytes())

    run.dataset, run.data, run.s3 = dataset, data, s3
    return run


def test_a_rerun_reproduces_the_metrics(in_process):
    code1, first = in_process("trial")
    code2, second = in_process("trial", output=f"s3://{BUCKET}/runs/rerun")
    assert code1 == code2 == 0 and first["metrics"] == second["metrics"] and first["params"] == second["params"]


def test_wrong_credentials_are_refused_without_leaking_the_secret(in_process, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-x9")
    code, s = in_process("validate-dataset")
    assert code == 10 and s["reason"] == "AccessDenied" and "SignatureDoesNotMatch" in s["message"]
    assert "not-the-secret-x9" not in json.dumps(s)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOBODY")
    code, s = in_process("trial")
    assert code == 10 and s["reason"] == "AccessDenied" and "InvalidAccessKeyId" in s["message"]


def test_missing_objects_and_an_unreachable_endpoint(in_process, monkeypatch):
    gone = {**in_process.dataset, "source": {"uri": f"s3://{BUCKET}/data/nope.csv", "format": "csv"}}
    code, s = in_process("validate-dataset", dataset=gone)
    assert code == 10 and s["reason"] == "SourceNotFound" and "nope.csv" in s["message"]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    code, s = in_process("validate-dataset")
    assert code == 11 and s["reason"] == "SourceUnreachable" and "unreachable" in s["message"]
    code = cli.main(["verify", "--uri", f"s3://{BUCKET}/m/model.skops", "--sha256", "0" * 64])
    s = json.loads(Path(os.environ["KILN_TERMINATION_LOG"]).read_bytes())
    assert code == 11 and s["reason"] == "SourceUnreachable" and s["uri"] == f"s3://{BUCKET}/m/model.skops"


def test_a_trial_refuses_data_that_changed_since_validation(in_process):
    code, s = in_process("trial", datasetVersion="0" * 64)
    assert code == 10 and s["reason"] == "DatasetChanged" and "content changed since validation" in s["message"]


def test_a_dataset_with_its_own_secret_is_read_with_it_while_artifacts_go_to_the_store(in_process, monkeypatch):
    """The Dataset's data sits on another S3 server, under other credentials (its Jobs get them with the
    KILN_SOURCE_ prefix). Reading it with the store's settings would find no such bucket; writing the
    profile with the warehouse's key would be refused by the store's IAM."""
    with moto_server() as warehouse:
        boto3.client("s3", endpoint_url=warehouse, region_name="us-east-1", aws_access_key_id="wh",
                     aws_secret_access_key="wh").create_bucket(Bucket="warehouse")
        boto3.client("s3", endpoint_url=warehouse, region_name="us-east-1", aws_access_key_id="wh",
                     aws_secret_access_key="wh").put_object(Bucket="warehouse", Key="iris.csv", Body=in_process.data)
        for key, value in {"AWS_ENDPOINT_URL": warehouse, "AWS_ACCESS_KEY_ID": "AKIAWAREHOUSE",
                           "AWS_SECRET_ACCESS_KEY": "warehouse-secret"}.items():
            monkeypatch.setenv(f"KILN_SOURCE_{key}", value)
        elsewhere = {**in_process.dataset, "source": {"uri": "s3://warehouse/iris.csv", "format": "csv"}}
        code, s = in_process("validate-dataset", dataset=elsewhere)
        assert code == 0 and s["result"] == "Succeeded" and s["rows"] == 150, s
        assert s["profileUri"].startswith(f"s3://{BUCKET}/")
        _get({"client": in_process.s3["client"]}, s["profileUri"].split("/", 3)[3])  # written to the store
        monkeypatch.delenv("KILN_SOURCE_AWS_ACCESS_KEY_ID")  # no own identity: the store's, on its server
        monkeypatch.delenv("KILN_SOURCE_AWS_ENDPOINT_URL")
        code, s = in_process("validate-dataset", dataset=elsewhere)
        assert code == 10 and s["reason"] == "SourceNotFound", s


def test_a_growing_prefix_is_snapshotted_once_and_runs_read_the_snapshot(in_process, monkeypatch, tmp_path):
    """A prefix of csv and parquet files on S3: validated into an immutable snapshot, written once; a
    run trains on that snapshot after the source grew and then vanished; retention deletes through S3."""
    import io

    import pandas as pd

    from kiln_runtime import store

    client = in_process.s3["client"]
    frame = pd.read_csv(io.BytesIO(in_process.data))
    prefix = f"labelled/{tmp_path.name}/"
    first = frame.iloc[:75].to_csv(index=False).encode()
    buf = io.BytesIO()
    frame.iloc[75:].assign(request_id="r", prediction="setosa").to_parquet(buf, index=False)
    second = buf.getvalue()
    client.put_object(Bucket=BUCKET, Key=prefix + "2024/part-0.csv", Body=first)
    client.put_object(Bucket=BUCKET, Key=prefix + "part-1.parquet", Body=second)
    client.put_object(Bucket=BUCKET, Key=prefix + "_SUCCESS", Body=b"")
    ds = {**in_process.dataset, "source": {"uri": f"s3://{BUCKET}/{prefix}"}}
    out = f"s3://{BUCKET}/datasets/{tmp_path.name}"

    code, v1 = in_process("validate-dataset", dataset=ds, output=out)
    assert code == 0 and v1["rows"] == 150 and v1["files"] == 2, v1
    canonical = {"files": sorted([["2024/part-0.csv", sha256_hex(first)], ["part-1.parquet", sha256_hex(second)]]),
                 "window": None}
    assert v1["version"] == sha256_hex(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode())
    key = v1["snapshotUri"].split("/", 3)[3]
    assert key == f"datasets/{tmp_path.name}/versions/{v1['version']}/data.parquet"
    assert sha256_hex(_get(in_process.s3, key)) == v1["snapshotSha256"]
    head = client.head_object(Bucket=BUCKET, Key=key)
    manifest = json.loads(_get(in_process.s3, key.replace("data.parquet", "manifest.json")))
    assert [f["key"] for f in manifest["files"]] == ["2024/part-0.csv", "part-1.parquet"]
    assert all(f["etag"] for f in manifest["files"])

    writes = []
    real = store.write_bytes
    monkeypatch.setattr(store, "write_bytes", lambda uri, body: writes.append(uri) or real(uri, body))
    code, again = in_process("validate-dataset", dataset=ds, output=out)
    assert code == 0 and again["snapshotSha256"] == v1["snapshotSha256"] and writes == []
    assert client.head_object(Bucket=BUCKET, Key=key)["ETag"] == head["ETag"]
    assert client.head_object(Bucket=BUCKET, Key=key)["LastModified"] == head["LastModified"]
    monkeypatch.setattr(store, "write_bytes", real)

    # The source grows (a new version), then vanishes; the run for the first version still trains.
    client.put_object(Bucket=BUCKET, Key=prefix + "part-2.csv", Body=frame.iloc[:10].to_csv(index=False).encode())
    code, v2 = in_process("validate-dataset", dataset=ds, output=out, keepVersions=[v1["version"]])
    assert code == 0 and v2["rows"] == 160 and v2["deletedVersions"] == []
    for obj in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]:
        client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    code, s = in_process("validate-dataset", dataset=ds, output=out)
    assert code == 10 and s["reason"] == "SourceEmpty" and f"s3://{BUCKET}/{prefix}" in s["message"]
    run = {"dataset": ds, "datasetVersion": v1["version"], "output": f"s3://{BUCKET}/runs/{tmp_path.name}-snap",
           "datasetSnapshot": {"uri": v1["snapshotUri"], "sha256": v1["snapshotSha256"]}}
    code, t = in_process("trial", **run)
    assert code == 0 and t["datasetVersion"] == v1["version"], t
    code, sel = in_process("select", **run)
    assert code == 0 and sel["measuredOn"]["rows"] == 38
    assert sel["modelVersion"]["lineage"]["datasetVersion"] == v1["version"]

    # Retention: a new version with keepVersions [] deletes both earlier snapshots, through S3.
    client.put_object(Bucket=BUCKET, Key=prefix + "part-9.csv", Body=in_process.data)  # minRows 100
    code, v3 = in_process("validate-dataset", dataset=ds, output=out, keepVersions=[])
    assert code == 0 and v3["deletedVersions"] == sorted([v1["version"], v2["version"]])
    left = {o["Key"].split("/")[3] for o in client.list_objects_v2(
        Bucket=BUCKET, Prefix=f"datasets/{tmp_path.name}/versions/")["Contents"]}
    assert left == {v3["version"]}
