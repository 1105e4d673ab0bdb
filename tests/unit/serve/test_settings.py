"""kiln-serve's environment: defaults, required variables, and refusals that name the variable."""

import pytest

from kiln_runtime.handoff import DEFAULT_SOCKET
from kiln_runtime.serve.settings import SettingsError, load

SHA = "a" * 64
BASE = {"KILN_MODEL_NAME": "m", "KILN_MODEL_URI": "file:///m.skops", "KILN_MODEL_SHA256": SHA,
        "KILN_SIGNATURE": "file:///signature.json"}


def test_defaults_switch_every_default_on():
    s = load(BASE)
    assert (s.port, s.workers, s.max_batch_size, s.model_format, s.allow_unsafe) == (8080, 1, 64, "skops", False)
    assert s.handoff_socket == DEFAULT_SOCKET  # drift hand-off on unless switched off explicitly
    assert s.onnx_uri is None and s.max_payload_bytes == 8 * 1024 * 1024


def test_sha256_prefix_and_case_are_normalised():
    assert load({**BASE, "KILN_MODEL_SHA256": "sha256:" + "AB" * 32}).model_sha256 == "ab" * 32


@pytest.mark.parametrize("change, names", [
    ({"KILN_MODEL_NAME": ""}, "KILN_MODEL_NAME"),
    ({"KILN_MODEL_SHA256": "xyz"}, "KILN_MODEL_SHA256"),
    ({"KILN_PORT": "http"}, "KILN_PORT"),
    ({"KILN_WORKERS": "0"}, "KILN_WORKERS"),
    ({"KILN_ALLOW_UNSAFE": "maybe"}, "KILN_ALLOW_UNSAFE"),
    ({"KILN_MODEL_FORMAT": "pickle"}, "KILN_MODEL_FORMAT"),
    ({"KILN_ONNX_URI": "file:///m.onnx"}, "KILN_ONNX_SHA256"),
    ({"KILN_MAX_LATENCY_MS": "-1"}, "KILN_MAX_LATENCY_MS"),
    ({"KILN_GRPC_PORT": "grpc"}, "KILN_GRPC_PORT"),
    ({"KILN_GRPC_PORT": "70000"}, "KILN_GRPC_PORT"),
    ({"KILN_GRPC_PORT": "9000", "KILN_PORT": "9000"}, "KILN_GRPC_PORT=9000 is also KILN_PORT"),
])
def test_bad_values_are_refused_naming_the_variable(change, names):
    with pytest.raises(SettingsError, match=names):
        load({**BASE, **change})


def test_handoff_can_only_be_switched_off_explicitly():
    assert load({**BASE, "KILN_HANDOFF_SOCKET": "off"}).handoff_socket is None
    assert load({**BASE, "KILN_HANDOFF_SOCKET": "/run/x.sock"}).handoff_socket == "/run/x.sock"


def test_grpc_port_defaults_to_8081_and_can_be_switched_off():
    assert load(BASE).grpc_port == 8081
    assert load({**BASE, "KILN_GRPC_PORT": "9001"}).grpc_port == 9001
    assert load({**BASE, "KILN_GRPC_PORT": "off"}).grpc_port is None
    assert load({**BASE, "KILN_GRPC_PORT": "0", "KILN_PORT": "0"}).grpc_port == 0  # ephemeral, for tests
    assert load({"KILN_MODELS_FILE": "/etc/kiln/models/models.json", "KILN_GRPC_PORT": "off"}).grpc_port is None
