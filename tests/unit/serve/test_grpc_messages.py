"""Our `inference` messages agree with the published protocol: every field's name, number, type,
cardinality and message type equals the descriptor tritonclient ships (read here, never used by the
server), and a message serialized by one parses in the other."""

from __future__ import annotations

import pytest
from tritonclient.grpc import service_pb2 as theirs_pb2  # tritonclient[grpc]: the dev extra

from kiln_runtime.serve.grpc import messages as pb


def _fields(desc):
    return {f.name: (f.number, f.type, f.is_repeated, f.message_type.full_name if f.message_type else None,
                     f.containing_oneof.name if f.containing_oneof else None) for f in desc.fields}


def _walk(desc, out):
    out[desc.full_name] = _fields(desc)
    for nested in desc.nested_types:
        _walk(nested, out)
    return out


@pytest.mark.parametrize("name", [m for m in pb.MESSAGES if "." not in m])
def test_fields_match_tritonclients_descriptor(name):
    ours = _walk(pb.DESCRIPTOR.message_types_by_name[name], {})
    theirs = _walk(theirs_pb2.DESCRIPTOR.message_types_by_name[name], {})
    assert ours == theirs


def test_methods_are_the_services_own():
    theirs = theirs_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    ours = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert ours.full_name == theirs.full_name == pb.SERVICE
    for method in ours.methods:
        other = theirs.methods_by_name[method.name]
        assert (method.input_type.full_name, method.output_type.full_name) == \
            (other.input_type.full_name, other.output_type.full_name)


def test_wire_compatibility_both_ways():
    theirs = theirs_pb2.ModelInferRequest(model_name="m", model_version="1", id="r-1")
    t = theirs.inputs.add(name="input-0", datatype="FP64", shape=[2, 3])
    t.contents.fp64_contents.extend([1, 2, 3, 4, 5, 6])
    t.parameters["binary_data_size"].int64_param = 48
    theirs.outputs.add(name="predict")
    theirs.raw_input_contents.append(b"\x01" * 48)
    theirs.parameters["priority"].uint64_param = 7
    ours = pb.ModelInferRequest.FromString(theirs.SerializeToString())
    assert ours.inputs[0].name == "input-0" and list(ours.inputs[0].shape) == [2, 3]
    assert list(ours.inputs[0].contents.fp64_contents) == [1, 2, 3, 4, 5, 6]
    assert ours.inputs[0].parameters["binary_data_size"].int64_param == 48
    assert ours.parameters["priority"].WhichOneof("parameter_choice") == "uint64_param"
    assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(deterministic=True)
    answer = pb.ModelInferResponse(model_name="m", id="r-1", raw_output_contents=[b"\x00" * 8])
    answer.outputs.add(name="predict", datatype="INT64", shape=[1])
    back = theirs_pb2.ModelInferResponse.FromString(answer.SerializeToString())
    assert back.outputs[0].datatype == "INT64" and back.raw_output_contents == [b"\x00" * 8]


def test_nested_message_classes_are_reachable():
    meta = pb.ModelMetadataResponse(name="m", versions=["1"], platform="p",
                                    inputs=[pb.ModelMetadataResponse.TensorMetadata(name="x", datatype="FP64",
                                                                                     shape=[-1, 20])])
    assert pb.ModelMetadataResponse.FromString(meta.SerializeToString()).inputs[0].shape == [-1, 20]
