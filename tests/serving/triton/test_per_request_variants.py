"""A repository built with ``variants="per_request"``: every trunk variant in one backend, chosen per request."""

import json
import threading

import numpy as np
import pytest

from serving.cli.main import main
from serving.client import Detector, UnknownVariantError
from serving.triton.embedded_server import EmbeddedTriton, free_port
from serving.triton.model_configs import RepositoryOptions, read_config
from serving.triton.per_request_variants import held_variants, read_live_variant, write_live_variant
from serving.triton.repository import build_repository, read_options
from shared.errors import ConfigError

pytestmark = pytest.mark.triton

PER_REQUEST = RepositoryOptions(heads_layout="in_trunk", variants="per_request", max_batch_size=4)


@pytest.fixture(scope="module")
def served(tmp_path_factory, fakes):
    work = fakes.make_workspace(tmp_path_factory.mktemp("per-request"))
    fakes.add_variant_metrics(work)
    summary = build_repository(work, options=PER_REQUEST)
    server = EmbeddedTriton(summary.path, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(),
                            admin_key="")
    with server:
        yield work, summary, server


def scores(det: Detector, image: np.ndarray, **kwargs) -> list[float]:
    [result] = det.detect(image, tasks="cars", **kwargs)
    return [d.score for d in result["cars"]]


def trunk_loads(server: EmbeddedTriton) -> int:
    return server.log_path.read_text().count("successfully loaded 'trunk'")


def test_the_mode_is_recorded_and_a_rebuild_from_build_json_keeps_it(served):
    work, summary, _ = served
    assert read_options(summary.path).variants == "per_request"
    cfg = read_config(summary.path / "trunk/config.pbtxt")
    assert cfg.default_model_filename == "variants_model.py"
    assert cfg.parameters["shared_cpu_arena"].string_value == "1"
    table = json.loads(cfg.parameters["variant_table"].string_value)
    assert [(r["name"], r["b1_ms"], r["b8_ms"]) for r in table] == [("ref", 10.0, 60.0), ("small", 5.0, 30.0)]
    assert held_variants(summary.path) == ["ref", "small"]
    rebuilt = build_repository(work, out=work / "rebuilt", options=read_options(summary.path))
    assert rebuilt.options.variants == "per_request"
    for version in ("1", "2"):
        files = {p.name for p in (rebuilt.path / "trunk" / version).iterdir()}
        assert {"variants_model.py", "variant_choice.py"} <= files


def test_per_request_needs_the_in_trunk_layout_and_names_the_choices():
    with pytest.raises(ConfigError, match="needs heads_layout='in_trunk'"):
        RepositoryOptions(heads_layout="shared", variants="per_request")
    with pytest.raises(ConfigError, match=r"\('versions', 'per_request'\)"):
        RepositoryOptions(variants="sometimes")


def test_each_request_runs_the_variant_it_names_through_the_ensembles(served, fakes):
    _, _, server = served
    image = fakes.random_images(1)[0]
    with Detector(server.url) as det:
        ref, small = scores(det, image, variant="ref"), scores(det, image, variant="small")
        assert ref != small  # different trunks, so different detections through the same head
        assert scores(det, image, variant="ref") == ref  # and back, in consecutive requests
        [fanout] = det.detect(image, variant="small")  # the fan-out ensemble forwards the parameter too
        assert [d.score for d in fanout["cars"]] == small


def test_the_default_variant_changes_with_the_file_and_no_reload(served, fakes):
    _, summary, server = served
    image = fakes.random_images(1)[0]
    with Detector(server.url) as det:
        ref, small = scores(det, image, variant="ref"), scores(det, image, variant="small")
        loads = trunk_loads(server)
        write_live_variant(summary.path, "ref")
        assert scores(det, image) == ref
        write_live_variant(summary.path, "small")
        assert scores(det, image) == small
        write_live_variant(summary.path, "auto", objective_ms=1000.0)  # room for the most accurate
        assert scores(det, image) == ref
        assert trunk_loads(server) == loads


def test_an_unknown_variant_fails_alone_under_concurrent_load(served, fakes):
    _, _, server = served
    images = fakes.random_images(4)
    failures, done, stop = [], [0], threading.Event()

    def background(variant):
        with Detector(server.url) as det:
            while not stop.is_set():
                try:
                    det.detect(images[done[0] % 4], variant=variant)
                    done[0] += 1
                except Exception as err:  # noqa: BLE001 (recorded: there must be none)
                    failures.append(err)

    threads = [threading.Thread(target=background, args=(v,)) for v in ("ref", "small", None)]
    for t in threads:
        t.start()
    try:
        with Detector(server.url) as det:
            for image in images:
                with pytest.raises(UnknownVariantError, match=r"'pruned-r9' is not held; held variants: \['ref', "
                                                              r"'small'\]"):
                    det.detect(image, variant="pruned-r9")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert failures == [] and done[0] > 0


def test_polyhead_variant_set_writes_the_default_and_refuses_a_variant_not_held(served, capsys):
    _, summary, _ = served
    assert main(["variant", "set", "small", "--repository", str(summary.path)]) == 0
    assert read_live_variant(summary.path)["variant"] == "small"
    assert main(["variant", "set", "nope", "--repository", str(summary.path)]) == 2
    assert "held variants: ['ref', 'small']" in capsys.readouterr().err
    assert main(["variant", "set", "auto", "--repository", str(summary.path)]) == 2  # auto needs an objective
    assert read_live_variant(summary.path)["variant"] == "small"


def _answered(server: EmbeddedTriton) -> dict[str, float]:
    """``polyhead_variant_requests_total`` per variant, read from Triton's own metrics endpoint."""
    from serving.bench.variants_bench import answered_per_variant

    return answered_per_variant(server.metrics_url)


def test_triton_metrics_count_the_requests_each_variant_answered(served, fakes):
    _, summary, server = served
    image = fakes.random_images(1)[0]
    before = _answered(server)
    assert set(before) == {"ref", "small"}  # one counter per held variant, from the load on
    with Detector(server.url) as det:
        for variant in ("small", "small", "ref"):
            det.detect(image, tasks="cars", variant=variant)
        write_live_variant(summary.path, "auto", objective_ms=1000.0)  # auto answers with the most accurate
        det.detect(image, tasks="cars")
    after = _answered(server)
    assert after["small"] - before["small"] == 2 and after["ref"] - before["ref"] == 2


def test_auto_serves_a_request_that_already_waited_with_the_faster_variant(served, fakes, monkeypatch):
    import time

    from serving.client import protocol

    _, summary, server = served
    image = fakes.random_images(1)[0]
    write_live_variant(summary.path, "auto", objective_ms=1000.0)
    with Detector(server.url) as det:
        before = _answered(server)
        det.detect(image, tasks="cars")  # fresh: the most accurate fits
        middle = _answered(server)
        det.detect(image, tasks="cars", arrived_unix_ns=time.time_ns() - 900_000_000)  # queued 0.9 s at the caller
        after_arrival = _answered(server)
        now_ns = time.time_ns
        monkeypatch.setattr(protocol.time, "time_ns", lambda: now_ns() - 900_000_000)  # the default stamp: the call
        det.detect(image, tasks="cars")
        after = _answered(server)
    assert middle["ref"] - before["ref"] == 1
    assert after_arrival["small"] - middle["small"] == 1, "a request that arrived 0.9 s ago gets the light one"
    assert after["small"] - after_arrival["small"] == 1, "a call stamped 0.9 s late: the light one again"
