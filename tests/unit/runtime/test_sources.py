"""Dataset sources other than S3 (which tests/integration/test_train_s3.py covers): http(s) on
loopback and file://, with each failure sorted into the reason the operator shows."""

import http.server
import threading

import pytest

from kiln_runtime.train import storeio as kio
from kiln_runtime.train.errors import InvalidSpec, SourceError, Unreachable


@pytest.fixture
def http_root(tmp_path):
    handler = lambda *a, **kw: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.RequestHandlerClass.log_message = lambda *a: None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_sources_and_their_failures(http_root):
    root, url = http_root
    (root / "d.csv").write_text("a,b\n1,2\n")
    assert kio.read(f"{url}/d.csv") == b"a,b\n1,2\n"
    with pytest.raises(SourceError) as err:
        kio.read(f"{url}/missing.csv")
    assert err.value.reason == "SourceNotFound" and "HTTP 404" in str(err.value)


def test_file_sources_and_uri_errors(tmp_path):
    with pytest.raises(SourceError) as err:
        kio.read(f"file://{tmp_path}/none.csv")
    assert err.value.reason == "SourceNotFound"
    with pytest.raises(InvalidSpec, match="unsupported scheme"):
        kio.read("ftp://host/x.csv")
    with pytest.raises(InvalidSpec, match="bucket and a key"):
        kio.read("s3://bucket-only")


def test_an_unreachable_http_endpoint_is_transient():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(Unreachable) as err:
        kio.read(f"http://127.0.0.1:{port}/d.csv")  # nothing listens: refused at once
    assert err.value.reason == "SourceUnreachable" and err.value.exit_code == 11
