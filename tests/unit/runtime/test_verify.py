"""`kiln-train verify`: the ModelVersion "Verified" check. Real artifacts from a real fit, checked through
the entry point; each way an artifact can be bad ends in exit 10 with a message naming it."""

from __future__ import annotations

import io
import json
import zipfile

import joblib
import numpy as np
import pytest
import skops.io as sio
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from kiln_runtime.store import sha256_hex
from kiln_runtime.train import cli, estimators, onnx_export, spec

from .conftest import dataset_frame


@pytest.fixture(scope="module")
def fitted():
    frame, dataset = dataset_frame("iris")
    features = spec.parse_dataset({**dataset, "source": {"uri": "file:///unused"}}).features
    X = frame[[c.name for c in features]].astype(float)
    model = estimators.make_pipeline("LogisticRegression", {"max_iter": 500}, features).fit(X, frame["target"])
    onnx = onnx_export.export(model, features, X, "classification")
    assert onnx.exported, onnx.reason
    return model, onnx.data


@pytest.fixture
def verify(tmp_path, monkeypatch):
    log = tmp_path / "termination-log"
    monkeypatch.setenv("KILN_TERMINATION_LOG", str(log))

    def put(name: str, data: bytes) -> tuple[str, str]:
        (tmp_path / name).write_bytes(data)
        return f"file://{tmp_path}/{name}", sha256_hex(data)

    def run(*args: str) -> tuple[int, dict]:
        code = cli.main(["verify", *args])
        return code, json.loads(log.read_bytes())

    run.put = put
    return run


def _failed(outcome, reason: str, code: int = 10) -> dict:
    got_code, summary = outcome
    assert (got_code, summary["result"], summary["reason"]) == (code, "Failed", reason), summary
    return summary


def test_a_model_and_its_onnx_export_verify(verify, fitted):
    model, onnx_bytes = fitted
    model_uri, model_sha = verify.put("model.skops", sio.dumps(model))
    onnx_uri, onnx_sha = verify.put("model.onnx", onnx_bytes)
    code, s = verify("--uri", model_uri, "--sha256", model_sha, "--uri", onnx_uri, "--sha256", f"sha256:{onnx_sha}")
    assert code == 0 and s["result"] == "Succeeded", s
    assert [(a["uri"], a["sha256"], a["format"]) for a in s["artifacts"]] == [
        (model_uri, model_sha, "skops"), (onnx_uri, onnx_sha, "onnx")]
    assert s["artifacts"][0]["loaded"] == "Pipeline (LogisticRegression)"


def test_a_tampered_artifact_is_a_digest_mismatch(verify, fitted):
    data = bytearray(sio.dumps(fitted[0]))
    uri, expected = verify.put("model.skops", bytes(data))
    data[100] ^= 0xFF
    verify.put("model.skops", bytes(data))
    s = _failed(verify("--uri", uri, "--sha256", expected), "DigestMismatch")
    assert s["uri"] == uri and s["expected"] == expected and s["actual"] == sha256_hex(bytes(data))
    assert f"the registry expects {expected}" in s["message"]


def test_damaged_files_whose_digest_matches_do_not_load(verify, fitted):
    s = _failed(verify(*_pair(verify.put("model.skops", sio.dumps(fitted[0])[:-200]))), "InvalidArtifact")
    assert "not a readable skops file" in s["message"] and "model.skops" in s["message"]
    s = _failed(verify(*_pair(verify.put("model.onnx", b"\x08\x07garbage"))), "InvalidArtifact")
    assert "not a loadable ONNX model" in s["message"]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("schema.json", "{}")
    uri, digest = verify.put("other.skops", buf.getvalue())  # a zip, but not skops
    assert _failed(verify("--uri", uri, "--sha256", digest), "InvalidArtifact")["uri"] == uri


@pytest.mark.parametrize("func", [np.save, print], ids=["numpy-function", "builtin"])
def test_skops_files_with_functions_in_them_are_refused(verify, func):
    # A function stored as a parameter runs at predict time: trusted only as classes, never functions.
    data = sio.dumps(make_pipeline(FunctionTransformer(func=func), LogisticRegression()))
    s = _failed(verify(*_pair(verify.put("evil.skops", data))), "UntrustedTypes")
    assert func.__name__ in s["message"] and "evil.skops" in s["message"]


def test_joblib_loads_only_with_the_unsafe_opt_in(verify, fitted):
    buf = io.BytesIO()
    joblib.dump(fitted[0], buf)
    args = _pair(verify.put("model.joblib", buf.getvalue()))
    s = _failed(verify(*args), "UnsafeFormat")
    assert "--allow-unsafe" in s["message"]
    code, s = verify(*args, "--allow-unsafe")
    assert code == 0 and s["artifacts"][0]["format"] == "joblib"


def test_bad_arguments_and_missing_objects(verify, tmp_path):
    uri, digest = verify.put("model.bin", b"x")
    assert "pass --format" in _failed(verify("--uri", uri, "--sha256", digest), "InvalidSpec")["message"]
    assert "64 hex digits" in _failed(verify("--uri", uri, "--sha256", "abc"), "InvalidSpec")["message"]
    assert "--sha256" in _failed(verify("--uri", uri), "InvalidSpec")["message"]
    s = _failed(verify("--uri", f"file://{tmp_path}/gone.skops", "--sha256", digest), "SourceNotFound")
    assert "gone.skops" in s["message"]


def _pair(put: tuple[str, str]) -> list[str]:
    return ["--uri", put[0], "--sha256", put[1]]
