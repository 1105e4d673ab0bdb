"""Fetching and loading: digests, formats, the skops allow-list, ONNX first and its fused matrix input."""

import hashlib

import numpy as np
import pytest

import serve_models
from kiln_runtime.serve import loader, settings
from kiln_runtime.serve.errors import LoadError


@pytest.fixture(scope="module")
def lr(tmp_path_factory):
    return serve_models.build(tmp_path_factory.mktemp("lr"), "lr", "per-feature")


def load(files, **env):
    return settings.load({**files.env(), "KILN_HANDOFF_SOCKET": "off", **env})


def test_onnx_is_served_when_given_and_its_per_feature_inputs_are_fused(lr):
    s = load(lr)
    runtime = loader.build(s, loader.fetch(s))
    assert runtime.kind == "onnx" and runtime.fused
    labels, probs = runtime.predict(lr.X, True)
    np.testing.assert_array_equal(labels, lr.labels)
    np.testing.assert_allclose(probs, lr.proba, atol=1e-5)


def test_without_onnx_the_skops_model_is_served(lr):
    s = load(lr, KILN_ONNX_URI="", KILN_ONNX_SHA256="")
    runtime = loader.build(s, loader.fetch(s))
    assert runtime.kind == "sklearn"
    np.testing.assert_array_equal(runtime.predict(lr.X, False)[0], lr.labels)


@pytest.mark.parametrize("variable", ["KILN_MODEL_SHA256", "KILN_ONNX_SHA256"])
def test_a_digest_mismatch_is_refused(lr, variable):
    s = load(lr, **{variable: "0" * 64})
    with pytest.raises(LoadError, match="digest mismatch: expected sha256 0000"):
        loader.fetch(s)


def test_joblib_is_refused_unless_unsafe_loading_is_allowed(lr):
    env = {"KILN_MODEL_URI": lr.joblib.as_uri(), "KILN_MODEL_SHA256": lr.sha["model.joblib"],
           "KILN_MODEL_FORMAT": "joblib", "KILN_ONNX_URI": "", "KILN_ONNX_SHA256": ""}
    with pytest.raises(LoadError, match="format joblib can execute arbitrary code.*KILN_ALLOW_UNSAFE"):
        loader.fetch(load(lr, **env))
    s = load(lr, KILN_ALLOW_UNSAFE="true", **env)
    assert loader.build(s, loader.fetch(s)).kind == "sklearn"


def test_a_skops_file_with_a_function_outside_the_allow_list_is_refused(tmp_path, lr):
    import skops.io as sio
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    import operator

    model = make_pipeline(FunctionTransformer(operator.neg), lr.model[-1]).fit(lr.X, lr.labels)
    data = sio.dumps(model)
    path = tmp_path / "model.skops"
    path.write_bytes(data)
    s = load(lr, KILN_MODEL_URI=path.as_uri(), KILN_MODEL_SHA256=hashlib.sha256(data).hexdigest(),
             KILN_ONNX_URI="", KILN_ONNX_SHA256="")
    with pytest.raises(LoadError, match="types outside the allow-list: _operator.neg"):
        loader.build(s, loader.fetch(s))


def test_a_signature_that_does_not_fit_the_model_is_refused(tmp_path, lr):
    sig = tmp_path / "signature.json"
    sig.write_text('{"inputs": [{"name": "a", "type": "number"}], "output": {"type": "label"}}')
    s = load(lr, KILN_SIGNATURE=sig.as_uri(), KILN_ONNX_URI="", KILN_ONNX_SHA256="")
    with pytest.raises(LoadError, match="the model takes 20 features, the signature lists 1"):
        loader.build(s, loader.fetch(s))


def test_inline_signature_json(lr):
    s = load(lr, KILN_SIGNATURE=lr.signature.read_text())
    assert loader.fetch(s).signature.width == 20
