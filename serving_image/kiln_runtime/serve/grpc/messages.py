"""The Open Inference Protocol's gRPC messages (package `inference`), defined here in Python.

Why not a .proto and generated code: the project copies no code from elsewhere, and a protoc step
would be one more build tool. The messages are built as a FileDescriptorProto from the protocol's
published facts (message and field names, numbers, types: KServe's grpc_predict_v2 and Triton's
grpc_service agree on all of these), then turned into classes by protobuf itself (upb: parsing and
serializing in C). A unit test compares every field with the descriptor tritonclient ships.

Only the messages of the methods kiln-serve answers are here; the others are answered UNIMPLEMENTED
without reading their bodies.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

FILE_NAME = "kiln/inference_v2.proto"
PACKAGE = "inference"
SERVICE = "inference.GRPCInferenceService"

_F = descriptor_pb2.FieldDescriptorProto
BOOL, INT32, INT64, UINT32, UINT64 = _F.TYPE_BOOL, _F.TYPE_INT32, _F.TYPE_INT64, _F.TYPE_UINT32, _F.TYPE_UINT64
FLOAT, DOUBLE, STRING, BYTES, MESSAGE = _F.TYPE_FLOAT, _F.TYPE_DOUBLE, _F.TYPE_STRING, _F.TYPE_BYTES, _F.TYPE_MESSAGE
ONE, MANY = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED

# message -> [(field, number, type, label, message type or None)]; "Outer.Inner" names nest.
MESSAGES = {
    "ServerLiveRequest": [],
    "ServerLiveResponse": [("live", 1, BOOL, ONE, None)],
    "ServerReadyRequest": [],
    "ServerReadyResponse": [("ready", 1, BOOL, ONE, None)],
    "ModelReadyRequest": [("name", 1, STRING, ONE, None), ("version", 2, STRING, ONE, None)],
    "ModelReadyResponse": [("ready", 1, BOOL, ONE, None)],
    "ServerMetadataRequest": [],
    "ServerMetadataResponse": [("name", 1, STRING, ONE, None), ("version", 2, STRING, ONE, None),
                               ("extensions", 3, STRING, MANY, None)],
    "ModelMetadataRequest": [("name", 1, STRING, ONE, None), ("version", 2, STRING, ONE, None)],
    "ModelMetadataResponse": [("name", 1, STRING, ONE, None), ("versions", 2, STRING, MANY, None),
                              ("platform", 3, STRING, ONE, None),
                              ("inputs", 4, MESSAGE, MANY, "ModelMetadataResponse.TensorMetadata"),
                              ("outputs", 5, MESSAGE, MANY, "ModelMetadataResponse.TensorMetadata")],
    "ModelMetadataResponse.TensorMetadata": [("name", 1, STRING, ONE, None), ("datatype", 2, STRING, ONE, None),
                                             ("shape", 3, INT64, MANY, None)],
    "InferParameter": [("bool_param", 1, BOOL, ONE, None), ("int64_param", 2, INT64, ONE, None),
                       ("string_param", 3, STRING, ONE, None), ("double_param", 4, DOUBLE, ONE, None),
                       ("uint64_param", 5, UINT64, ONE, None)],
    "InferTensorContents": [("bool_contents", 1, BOOL, MANY, None), ("int_contents", 2, INT32, MANY, None),
                            ("int64_contents", 3, INT64, MANY, None), ("uint_contents", 4, UINT32, MANY, None),
                            ("uint64_contents", 5, UINT64, MANY, None), ("fp32_contents", 6, FLOAT, MANY, None),
                            ("fp64_contents", 7, DOUBLE, MANY, None), ("bytes_contents", 8, BYTES, MANY, None)],
    "ModelInferRequest": [("model_name", 1, STRING, ONE, None), ("model_version", 2, STRING, ONE, None),
                          ("id", 3, STRING, ONE, None), ("parameters", 4, "map", MANY, None),
                          ("inputs", 5, MESSAGE, MANY, "ModelInferRequest.InferInputTensor"),
                          ("outputs", 6, MESSAGE, MANY, "ModelInferRequest.InferRequestedOutputTensor"),
                          ("raw_input_contents", 7, BYTES, MANY, None)],
    "ModelInferRequest.InferInputTensor": [("name", 1, STRING, ONE, None), ("datatype", 2, STRING, ONE, None),
                                           ("shape", 3, INT64, MANY, None), ("parameters", 4, "map", MANY, None),
                                           ("contents", 5, MESSAGE, ONE, "InferTensorContents")],
    "ModelInferRequest.InferRequestedOutputTensor": [("name", 1, STRING, ONE, None),
                                                     ("parameters", 2, "map", MANY, None)],
    "ModelInferResponse": [("model_name", 1, STRING, ONE, None), ("model_version", 2, STRING, ONE, None),
                           ("id", 3, STRING, ONE, None), ("parameters", 4, "map", MANY, None),
                           ("outputs", 5, MESSAGE, MANY, "ModelInferResponse.InferOutputTensor"),
                           ("raw_output_contents", 6, BYTES, MANY, None)],
    "ModelInferResponse.InferOutputTensor": [("name", 1, STRING, ONE, None), ("datatype", 2, STRING, ONE, None),
                                             ("shape", 3, INT64, MANY, None), ("parameters", 4, "map", MANY, None),
                                             ("contents", 5, MESSAGE, ONE, "InferTensorContents")],
}
# InferParameter's fields are one choice: a oneof named as in the protocol.
ONEOFS = {"InferParameter": "parameter_choice"}
# Method -> (request, response) message names.
METHODS = {
    "ServerLive": ("ServerLiveRequest", "ServerLiveResponse"),
    "ServerReady": ("ServerReadyRequest", "ServerReadyResponse"),
    "ModelReady": ("ModelReadyRequest", "ModelReadyResponse"),
    "ServerMetadata": ("ServerMetadataRequest", "ServerMetadataResponse"),
    "ModelMetadata": ("ModelMetadataRequest", "ModelMetadataResponse"),
    "ModelInfer": ("ModelInferRequest", "ModelInferResponse"),
}


def file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto(name=FILE_NAME, package=PACKAGE, syntax="proto3")
    protos: dict[str, descriptor_pb2.DescriptorProto] = {}
    for full in MESSAGES:  # outer messages come before their nested ones in MESSAGES
        outer, _, inner = full.rpartition(".")
        parent = protos[outer].nested_type if outer else fdp.message_type
        protos[full] = parent.add(name=inner)
    for full, fields in MESSAGES.items():
        msg = protos[full]
        oneof = ONEOFS.get(full)
        if oneof:
            msg.oneof_decl.add(name=oneof)
        for name, number, ftype, label, type_name in fields:
            field = msg.field.add(name=name, number=number, label=label, json_name=_camel(name))
            if ftype == "map":  # map<string, InferParameter>: a nested XxxEntry message, as protoc makes it
                entry = msg.nested_type.add(name=_camel(name, upper=True) + "Entry")
                entry.options.map_entry = True
                entry.field.add(name="key", number=1, label=ONE, type=STRING, json_name="key")
                entry.field.add(name="value", number=2, label=ONE, type=MESSAGE,
                                type_name=f".{PACKAGE}.InferParameter", json_name="value")
                field.type = MESSAGE
                field.type_name = f".{PACKAGE}.{full}.{entry.name}"
            else:
                field.type = ftype
                if type_name:
                    field.type_name = f".{PACKAGE}.{type_name}"
            if oneof:
                field.oneof_index = 0
    service = fdp.service.add(name="GRPCInferenceService")
    for method, (request, response) in METHODS.items():
        service.method.add(name=method, input_type=f".{PACKAGE}.{request}", output_type=f".{PACKAGE}.{response}")
    return fdp


def _camel(name: str, upper: bool = False) -> str:
    parts = name.split("_")
    head = parts[0].capitalize() if upper else parts[0]
    return head + "".join(p.capitalize() for p in parts[1:])


def _classes() -> dict:
    # A pool of our own: the default pool may already hold Triton's `inference` package (tritonclient
    # in the same process, as in the tests), and one pool cannot hold a name twice.
    pool = descriptor_pool.DescriptorPool()
    fd = pool.Add(file_descriptor())
    fd = pool.FindFileByName(FILE_NAME)
    out = {}
    for full in MESSAGES:
        out[full] = message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{full}"))
    out["__file__"] = fd
    return out


_CLASSES = _classes()
DESCRIPTOR = _CLASSES.pop("__file__")
ServerLiveRequest = _CLASSES["ServerLiveRequest"]
ServerLiveResponse = _CLASSES["ServerLiveResponse"]
ServerReadyRequest = _CLASSES["ServerReadyRequest"]
ServerReadyResponse = _CLASSES["ServerReadyResponse"]
ModelReadyRequest = _CLASSES["ModelReadyRequest"]
ModelReadyResponse = _CLASSES["ModelReadyResponse"]
ServerMetadataRequest = _CLASSES["ServerMetadataRequest"]
ServerMetadataResponse = _CLASSES["ServerMetadataResponse"]
ModelMetadataRequest = _CLASSES["ModelMetadataRequest"]
ModelMetadataResponse = _CLASSES["ModelMetadataResponse"]
ModelInferRequest = _CLASSES["ModelInferRequest"]
ModelInferResponse = _CLASSES["ModelInferResponse"]
InferTensorContents = _CLASSES["InferTensorContents"]
InferParameter = _CLASSES["InferParameter"]
