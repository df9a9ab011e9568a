"""Denormal-flushing onnxruntime sessions, on a thread of their own."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from shared.errors import ConfigError
from shared.onnx_session import cpu_session
from transfer.export.denormals import on_flushing_thread

TINY = np.float32(1e-39)  # a float32 denormal


def _doubled() -> bytes:
    """An ONNX model ``y = x + x`` on float32 ``(1,)`` (a multiply by a constant 1 is optimised away)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "doubled", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _through(sess) -> float:
    return float(sess.run(None, {"x": np.array([TINY], np.float32)})[0][0])


def test_a_flushing_session_computes_denormals_as_zero_and_the_caller_keeps_its_own():
    model = _doubled()
    assert _through(cpu_session(model)) == pytest.approx(2e-39, rel=1e-3)  # the process's first session: plain

    def flushed() -> tuple[float, float]:
        sess = cpu_session(model, flush_denormals=True)
        return _through(sess), float((np.array([TINY]) + TINY)[0])

    session_out, numpy_out = on_flushing_thread(flushed)
    assert session_out == 0.0 and numpy_out == 0.0  # the thread's FTZ/DAZ are set
    assert float((np.array([TINY]) + TINY)[0]) != 0.0  # ... and this thread's are not
    assert _through(cpu_session(model)) != 0.0


def test_a_flushing_session_is_refused_on_the_main_thread_and_errors_come_back():
    with pytest.raises(ConfigError, match="on_flushing_thread"):
        cpu_session(_doubled(), flush_denormals=True)
    with pytest.raises(ValueError, match="inner"):
        on_flushing_thread(lambda: (_ for _ in ()).throw(ValueError("inner")))
    assert on_flushing_thread(lambda: 41 + 1) == 42
    onnx.checker.check_model(onnx.load_from_string(_doubled()))



def test_flushed_latency_times_trunks_side_by_side_and_leaves_this_thread_exact(tmp_path, fakes):
    import json

    from transfer.export.latency import flushed_latency

    work = fakes.make_workspace(tmp_path)
    paths = {n: work / "trunk" / n / "model.onnx" for n in ("ref", "small")}
    size = json.loads((work / "trunk/ref/variant.json").read_text())["input_size"]
    check = np.zeros((1, 3, size, size), np.uint8)
    lat = flushed_latency(paths, check, repeats=4, rounds=2)
    assert set(lat) == {"ref", "small"} and all(0 < v[b] < 10_000 for v in lat.values() for b in ("b1", "b8"))
    assert float((np.array([TINY]) + TINY)[0]) != 0.0
    (tmp_path / "doubled.onnx").write_bytes(_doubled())  # its input is "x", not "images"
    with pytest.raises(Exception, match="images"):  # an error on the timing thread comes back here
        flushed_latency({"m": tmp_path / "doubled.onnx"}, check, repeats=2, rounds=1)
