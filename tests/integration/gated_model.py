"""A model whose large predictions wait for the test's go-ahead: a precondition the test controls.

`GatedModel` wraps a fitted scikit-learn classifier. A call with at least `min_rows` rows connects
to the test's `Gate` (a TCP listener on 127.0.0.1), says it has started, and waits until the test
releases it; smaller calls go straight through. So a test knows for certain that kiln-serve is in
the middle of a prediction, however fast or slow the machine, and decides when it ends.

kiln-serve loads it from a joblib file (KILN_MODEL_FORMAT=joblib, KILN_ALLOW_UNSAFE=true) with this
directory on its PYTHONPATH, so the pickled class `gated_model.GatedModel` is importable there.
If the test is gone (the gate refuses or closes), the prediction proceeds: a failing test never
leaves the server stuck.
"""

from __future__ import annotations

import socket

import numpy as np

ENTERED = b"entered\n"
GO = b"go\n"
_WAIT_LIMIT_S = 300.0  # a backstop only: the test releases the gate or closes it long before


class GatedModel:
    def __init__(self, model, gate_port: int, min_rows: int):
        self.model = model
        self.gate_port = gate_port
        self.min_rows = min_rows
        self.classes_ = model.classes_
        self.n_features_in_ = model.n_features_in_

    def _wait(self, rows: int) -> None:
        if rows < self.min_rows:
            return
        try:
            conn = socket.create_connection(("127.0.0.1", self.gate_port), timeout=_WAIT_LIMIT_S)
        except OSError:
            return  # nobody holds the gate
        with conn:
            try:
                conn.sendall(ENTERED)
                conn.recv(16)  # GO, or b"" when the test closed the gate
            except OSError:
                pass

    def predict(self, x):
        self._wait(len(x))
        return self.model.predict(np.asarray(x))

    def predict_proba(self, x):
        self._wait(len(x))
        return self.model.predict_proba(np.asarray(x))


class Gate:
    """The test's side: a listener the model reports to, and the release."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.held: socket.socket | None = None

    def wait_entered(self, timeout: float = 120.0) -> None:
        """Returns once a large prediction has started and is waiting; fails after `timeout` s."""
        self.listener.settimeout(timeout)
        conn, _ = self.listener.accept()
        conn.settimeout(timeout)
        self.held = conn
        data = b""
        while not data.endswith(ENTERED):
            chunk = conn.recv(64)
            if not chunk:
                raise AssertionError(f"the model closed the gate before saying it had started: {data!r}")
            data += chunk

    def release(self) -> None:
        if self.held is not None:
            try:
                self.held.sendall(GO)
            finally:
                self.held.close()
                self.held = None

    def close(self) -> None:
        """Releases a held prediction (if any) and stops listening: idempotent, for finally blocks."""
        try:
            self.release()
        except OSError:
            pass
        self.listener.close()
