"""bench/arena_memory.py on real ONNX files: every mode opens every session and reports memory that grows."""

from bench.arena_memory import MODES, measure
from tests.fake_workspace import SIZE


def test_every_mode_reports_the_memory_of_one_and_of_all_sessions(tmp_path, fakes):
    work = fakes.make_workspace(tmp_path)
    files = [work / "trunk" / n / "model.onnx" for n in ("ref", "small", "rejected")]
    result = measure(files, SIZE)
    assert set(result) == set(MODES)
    for mode, added in result.items():
        assert sorted(added) == [1, 2, 3], mode
        assert added[3] >= added[1] > 0, (mode, added)  # opening more sessions never frees memory


def test_the_weights_floor_is_nearly_the_onnx_files_bytes(tmp_path, fakes):
    from bench.arena_memory import weights_mib

    work = fakes.make_workspace(tmp_path)
    files = [work / "trunk" / n / "model.onnx" for n in ("ref", "small")]
    on_disk = [f.stat().st_size / 2**20 for f in files]
    # an ONNX trunk is its initializers plus a graph of a few KB
    assert 0.8 * sum(on_disk) < weights_mib(files) < sum(on_disk)
    assert 0.8 * on_disk[1] < weights_mib(files[1:]) < on_disk[1] < sum(on_disk)
