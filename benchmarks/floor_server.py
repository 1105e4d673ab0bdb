"""The floor: the least a Python model server can do per request, to measure kiln-serve against.

uvloop + httptools, the KServe V1 body parsed with orjson, onnxruntime on the rows, a JSON answer.
Nothing else: no validation beyond what numpy does, no batching, no metrics, no routing (every POST
is a prediction, any other request gets the fixed health answer). Written for issue 10's benchmark.

    python benchmarks/floor_server.py MODEL.onnx PORT
"""

from __future__ import annotations

import asyncio
import sys

import httptools
import numpy as np
import onnxruntime as ort
import orjson
import uvloop


def main() -> None:
    model_path, port = sys.argv[1], int(sys.argv[2])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    label = [session.get_outputs()[0].name]
    run = session.run
    if len(inputs) == 1:
        name = inputs[0].name

        def feeds(x):
            return {name: x}
    else:  # one [N, 1] input per feature
        names = [i.name for i in inputs]

        def feeds(x):
            return {n: x[:, j:j + 1] for j, n in enumerate(names)}

    class Floor(asyncio.Protocol):
        def __init__(self):
            self.parser = httptools.HttpRequestParser(self)
            self.body = []

        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                self.transport.close()

        def on_body(self, chunk):
            self.body.append(chunk)

        def on_message_complete(self):
            body, self.body = b"".join(self.body), []
            if self.parser.get_method() == b"POST":
                try:
                    x = np.array(orjson.loads(body)["instances"], dtype=np.float32)
                    out = b'{"predictions":' + orjson.dumps(run(label, feeds(x))[0].tolist()) + b"}"
                    status = b"200 OK"
                except Exception as exc:
                    out, status = orjson.dumps({"error": str(exc)}), b"400 Bad Request"
            else:
                out, status = b'{"ready":true}', b"200 OK"
            self.transport.write(b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
                                 b"content-length: " + str(len(out)).encode() + b"\r\n\r\n" + out)
            if not self.parser.should_keep_alive():
                self.transport.close()

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(loop.create_server(Floor, "127.0.0.1", port, backlog=4096))
    print(f"floor server on 127.0.0.1:{port}", flush=True)
    try:
        loop.run_forever()
    finally:
        server.close()


if __name__ == "__main__":
    main()
