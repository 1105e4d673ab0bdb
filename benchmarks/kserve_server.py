"""KServe's Python model server serving a scikit-learn model, as KServe's own sklearnserver does
(kserve.Model, joblib.load, get_predict_input / get_predict_response), for benchmarks/serving.py.
Runs in its own venv (benchmarks/setup_serving_peers.sh): KServe's pins conflict with Kiln's.

    python benchmarks/kserve_server.py MODEL.joblib PORT
"""

import sys

import joblib
from kserve import Model, ModelServer
from kserve.utils.utils import get_predict_input, get_predict_response


class SKLearnModel(Model):
    def __init__(self, name: str, path: str):
        super().__init__(name)
        self.path = path
        self.load()

    def load(self) -> bool:
        self._model = joblib.load(self.path)
        self.ready = True
        return self.ready

    def predict(self, payload, headers=None):
        instances = get_predict_input(payload)
        return get_predict_response(payload, self._model.predict(instances), self.name)


if __name__ == "__main__":
    model = SKLearnModel("m", sys.argv[1])
    ModelServer(http_port=int(sys.argv[2]), grpc_port=int(sys.argv[3]), enable_grpc=False, workers=1).start([model])
