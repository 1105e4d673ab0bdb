"""The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`), served by kiln-serve on
its own port (KILN_GRPC_PORT) on the same event loop as HTTP.

Why HTTP/2 by hand: grpcio's Python server runs each call through a thread pool and several Python
objects per message, a few thousand calls per second per core; kiln-serve's HTTP path does tens of
thousands. Here a connection is an asyncio Protocol (h2.py) that parses frames, decodes header blocks
(hpack.py, cached per block) and hands each unary call's message to the service (service.py), which
validates it with the same code as the HTTP V2 path and queues it in the same Batcher.

    frames.py    HTTP/2 frame layout, codes and builders (RFC 9113)
    huffman.py   HPACK's Huffman code (RFC 7541 appendix B)
    hpack.py     header block decoding, our constant header blocks
    h2.py        one connection: streams, flow control, gRPC message framing
    status.py    gRPC status codes, HTTP status -> gRPC code, grpc-message encoding
    messages.py  the protocol's messages, built from a descriptor defined here
    codec.py     ModelInferRequest -> validated rows; predictions -> ModelInferResponse
    service.py   method dispatch and the narrow interface to the models
"""
