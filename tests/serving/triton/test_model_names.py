import pytest

from heads.exportable import OUTPUT_NAMES
from serving.triton import deployment_facts as facts
from serving.triton import model_configs as mcfg
from serving.triton import model_names as names
from serving.triton.repository import build_repository
from shared.contract import FEATURE_STRIDES, default_contract


@pytest.mark.parametrize("task", ["cars", "traffic_signs", "a", "x9_y"])
def test_names_round_trip(task: str) -> None:
    assert names.task_model(task) == f"detect_{task}" and names.task_of_model(names.task_model(task)) == task
    assert names.head_model(task) == f"head_{task}" and names.task_of_head_model(names.head_model(task)) == task
    for output in names.HEAD_OUTPUTS:
        assert names.split_head_output(names.head_output(task, output)) == (task, output)
    for model in (names.task_model(task), names.head_model(task)):
        assert names.MODEL_NAME_RE.match(model) and facts.MODEL_NAME_RE.match(model)


def test_inverses_refuse_other_names() -> None:
    for model in (names.TRUNK_MODEL, names.FANOUT_MODEL, names.SHARED_HEADS_MODEL, "head_cars"):
        assert names.task_of_model(model) is None
    for model in (names.TRUNK_MODEL, names.FANOUT_MODEL, names.SHARED_HEADS_MODEL, "detect_cars"):
        assert names.task_of_head_model(model) is None
    assert names.split_head_output("p3") is None and names.split_head_output("cars_logits") is None
    assert names.split_head_output("my_cars_num_dets") == ("my_cars", "num_dets")
    for bad in ("detect_", "head_Cars", "detect_9x", "trunk2", "detect_" + "a" * 40):
        assert not names.MODEL_NAME_RE.match(bad), bad


def test_one_source_for_the_names_and_strides() -> None:
    assert names.HEAD_OUTPUTS == tuple(OUTPUT_NAMES) == mcfg.HEAD_OUTPUTS
    assert (facts.TRUNK_MODEL, facts.FANOUT_MODEL, facts.SHARED_HEADS_MODEL) == ("trunk", "detect", "heads")
    assert facts.MODEL_NAME_RE is names.MODEL_NAME_RE
    assert facts.HEAD_MODEL.format(task="cars") == "head_cars" and facts.TASK_MODEL.format(task="cars") == "detect_cars"
    assert FEATURE_STRIDES == {s.name: s.stride for s in default_contract()} == {"p3": 8, "p4": 16, "p5": 32}


@pytest.mark.parametrize("layout", mcfg.HEADS_LAYOUTS)
def test_every_model_the_repository_builds_matches_the_rule(workspace, fakes, layout: str) -> None:
    summary = build_repository(workspace, heads_layout=layout)
    assert all(facts.MODEL_NAME_RE.match(m) for m in summary.models), summary.models
    on_disk = {p.parent.name for p in summary.path.glob("*/config.pbtxt")}
    assert on_disk == set(summary.models)
    for model in summary.models:
        assert mcfg.read_config(summary.path / model / "config.pbtxt").name == model
    assert {names.task_of_model(m) for m in summary.models} - {None} == set(fakes.TASKS)
    fan = mcfg.read_config(summary.path / names.FANOUT_MODEL / "config.pbtxt")
    assert [names.split_head_output(o.name) for o in fan.output] == [
        (t, o) for t in sorted(fakes.TASKS) for o in names.HEAD_OUTPUTS
    ]
    one = mcfg.read_config(summary.path / names.task_model("cars") / "config.pbtxt")
    assert [o.name for o in one.output] == list(names.HEAD_OUTPUTS)
