"""Hostile requests straight to Triton (no client checks): rejected with clear errors, serving goes on."""

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from serving.client import Detector

pytestmark = pytest.mark.triton
MAX_BATCH = 4


@pytest.fixture(scope="module")
def server(tmp_path_factory, fakes, server_factory):
    srv = server_factory(fakes.make_workspace(tmp_path_factory.mktemp("inputs_work")))  # max_batch_size=4
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    with grpcclient.InferenceServerClient(server.url) as c:
        yield c


def _input(name, array, dtype="UINT8", shape=None):
    inp = grpcclient.InferInput(name, list(array.shape), dtype)
    inp.set_data_from_numpy(array)
    if shape is not None:
        inp.set_shape(list(shape))  # declared shape disagrees with the bytes sent
    return inp


def _images(n, side=64):
    return np.zeros((n, 3, side, side), np.uint8)


CASES = {
    "oversized-batch": (
        "detect",
        lambda: [_input("images", _images(MAX_BATCH + 1))],
        rf"batch-size must be <= {MAX_BATCH}",
    ),
    "wrong-input-name": ("detect_cars", lambda: [_input("pixels", _images(1))], "unexpected inference input 'pixels'"),
    "no-input": ("detect_cars", lambda: [], "expected 1 inputs but got 0 inputs"),
    "extra-input": (
        "detect_cars",
        lambda: [_input("images", _images(1)), _input("extra", _images(1))],
        "expected 1 inputs but got 2 inputs",
    ),
    "rank-5": ("trunk", lambda: [_input("images", np.zeros((1, 1, 3, 64, 64), np.uint8))], "unexpected shape"),
    "channels-4": ("trunk", lambda: [_input("images", np.zeros((1, 4, 64, 64), np.uint8))], "unexpected shape"),
    "huge-image": ("detect", lambda: [_input("images", _images(1, side=2048))], "unexpected shape"),
    "int64-images": (
        "detect",
        lambda: [_input("images", _images(1).astype(np.int64), "INT64")],
        "data-type is 'INT64', but model 'detect' expects 'UINT8'",
    ),
    "bytes-short-of-shape": (
        "detect_cars",
        lambda: [_input("images", _images(1)[:, :, :32], shape=[1, 3, 64, 64])],
        r"input byte size mismatch for input 'images' for model 'detect_cars'. Expected 12288, got 6144",
    ),
    "head-wrong-feature": (
        "head_cars",
        lambda: [_input(n, np.zeros((1, 8, 3, 3), np.float32), "FP32") for n in ("p3", "p4", "p5")],
        r"unexpected shape for input 'p\d' for model 'head_cars'",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_request_is_rejected_with_a_clear_error(server, client, case):
    model, inputs, message = CASES[case]
    with pytest.raises(InferenceServerException, match=message) as err:
        client.infer(model, inputs(), client_timeout=30)
    assert "INVALID_ARGUMENT" in str(err.value.status()) or "INTERNAL" in str(err.value.status())
    assert client.infer("detect_cars", [_input("images", _images(1))]).as_numpy("num_dets").shape == (1, 1)


def test_unknown_output_is_rejected(client):
    out = [grpcclient.InferRequestedOutput("nope")]
    with pytest.raises(InferenceServerException, match="nope"):
        client.infer("detect", [_input("images", _images(1))], outputs=out, client_timeout=30)


def test_client_splits_a_batch_larger_than_the_server_takes(server, fakes):
    images = fakes.random_images(2 * MAX_BATCH + 1, seed=9)
    with Detector(server.url, timeout_s=30) as det:
        results = det.detect(images)
        singles = [det.detect(img)[0] for img in images[:2]]
    assert len(results) == len(images) and results[:2] == singles
